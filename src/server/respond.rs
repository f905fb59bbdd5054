//! Answers: one JSON object, or a Server-Sent Events stream of chunks.

use super::*;

pub(super) async fn respond(st: Arc<AppState>, job: Job, stream: bool) -> Response {
    if stream {
        sse(st, job)
    } else {
        match collect(&st, job).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Per-choice latency bookkeeping shared by both response forms.
pub(super) struct Timing {
    last: Option<Instant>,
    /// The access log's token count.
    tally: Option<Arc<Tally>>,
}

impl Timing {
    /// `tally`: the access log's count for the request, where it keeps one.
    pub(super) fn new(tally: Option<Arc<Tally>>) -> Self {
        Timing { last: None, tally }
    }

    /// `n` tokens came out (none is a no-op): the access log's and the metrics' counts, and
    /// the inter-token latency.
    pub(super) fn token(&mut self, st: &AppState, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(t) = &self.tally {
            t.generated(n);
        }
        let now = Instant::now();
        if let Some(prev) = self.last {
            // Tokens arriving together (a flushed stop-string hold) share the interval.
            let dt = now.duration_since(prev).as_secs_f64() / n as f64;
            for _ in 0..n {
                st.metrics.itl.observe(dt);
            }
        }
        self.last = Some(now);
        st.metrics
            .generation_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The request ended: its time to first token.
    pub(super) fn finished(&self, st: &AppState, usage: &crate::engine::Usage) {
        if let Some(t) = usage.time_to_first_token {
            st.metrics.ttft.observe(t.as_secs_f64());
        }
    }
}

/// A token's text for logprobs (`token_id:N` when the model has no tokenizer, as vLLM).
pub(super) fn token_text(st: &AppState, id: u32) -> (String, Vec<u8>) {
    match st.engine.tokenizer() {
        // The token's own bytes where the vocabulary has them: `decode` of a lone token drops
        // a SentencePiece word's leading space, which belongs to the token.
        Some(t) => match t.token_bytes(id) {
            Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec()),
            None => {
                let text = t.decode(&[id]).unwrap_or_default();
                let bytes = text.as_bytes().to_vec();
                (text, bytes)
            }
        },
        None => (
            format!("token_id:{id}"),
            format!("token_id:{id}").into_bytes(),
        ),
    }
}

/// Chat's `logprobs: {content: [...]}`.
pub(super) fn chat_logprobs(st: &AppState, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let (token, bytes) = token_text(st, id);
        json!({ "token": token, "logprob": lp, "bytes": bytes })
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|(i, p)| entry(*i, *p)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs: {tokens, token_logprobs, top_logprobs, text_offset}`; `offset` is
/// where the first token's text starts in the choice's text (advanced past these tokens).
pub(super) fn text_logprobs(st: &AppState, lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut text_offset = Vec::new();
    for l in lps {
        let (t, _) = token_text(st, l.token);
        text_offset.push(*offset);
        *offset += t.chars().count();
        tokens.push(t);
        token_logprobs.push(l.logprob);
        let mut m = serde_json::Map::new();
        for (i, p) in &l.top {
            m.insert(token_text(st, *i).0, json!(p));
        }
        top.push(Value::Object(m));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

pub(super) fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

/// Waits for every choice and answers one JSON object.
pub(super) async fn collect(st: &AppState, job: Job) -> Result<Value, ApiError> {
    let kind = job.kind;
    let echo = job.echo.clone();
    let tally = job.tally.clone();
    let results = futures::future::join_all(job.handles.into_iter().map(|mut h| {
        let echo = echo.clone();
        let tally = tally.clone();
        async move {
            let mut text = echo.unwrap_or_default();
            let mut tokens = 0;
            let mut lps = Vec::new();
            let mut timing = Timing::new(tally);
            while let Some(ev) = h.next().await {
                match ev {
                    Event::Delta {
                        text: t,
                        token_ids,
                        logprobs,
                    } => {
                        timing.token(st, token_ids.len());
                        tokens += token_ids.len();
                        lps.extend(logprobs);
                        text.push_str(&t);
                    }
                    Event::Finished { reason, usage } => {
                        timing.finished(st, &usage);
                        return Ok((text, tokens, reason, lps, usage.cached_tokens));
                    }
                    Event::Failed(e) => return Err(e),
                }
            }
            Err("the engine stopped".to_string())
        }
    }))
    .await;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    // The prompt is computed once for all choices: report the first choice's cache hits.
    let mut cached_tokens = None;
    for (i, r) in results.into_iter().enumerate() {
        let (text, tokens, reason, lps, cached) = r.map_err(failed)?;
        cached_tokens.get_or_insert(cached);
        let logprobs = match (job.logprobs, kind) {
            (false, _) => Value::Null,
            (true, Kind::Chat) => chat_logprobs(st, &lps),
            (true, Kind::Text) => {
                let mut offset = echo.as_deref().map_or(0, |e| e.chars().count());
                text_logprobs(st, &lps, &mut offset)
            }
        };
        completion_tokens += tokens;
        choices.push(match (kind, &job.chat) {
            (Kind::Chat, Some(out)) => {
                let (reasoning, content, calls) = tools::parse_complete(out, &text);
                let mut message = json!({ "role": "assistant", "content": content });
                if !reasoning.is_empty() {
                    message["reasoning_content"] = json!(reasoning);
                }
                let mut finish = reason_str(reason);
                if !calls.is_empty() {
                    // Only calls: content is null, as OpenAI answers.
                    if content.trim().is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls.iter().map(|c| c.message_json()).collect();
                    // A call cut off by max_tokens still says "length".
                    if reason != FinishReason::Length {
                        finish = "tool_calls";
                    }
                }
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                })
            }
            (Kind::Chat, None) => json!({
                "index": i,
                "message": { "role": "assistant", "content": text },
                "logprobs": logprobs,
                "finish_reason": reason_str(reason),
            }),
            (Kind::Text, _) => json!({
                "index": i,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": reason_str(reason),
            }),
        });
    }
    Ok(json!({
        "id": job.id,
        "object": kind.object(false),
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage_json(job.prompt_tokens, completion_tokens, cached_tokens.unwrap_or(0)),
    }))
}

/// The state of one streaming response.
pub(super) struct Sse {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
    events: futures::stream::SelectAll<BoxStream<'static, (usize, Event)>>,
    timing: Vec<Timing>,
    completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (from the first choice's usage).
    cached_tokens: usize,
    /// Frames to send before the first event (role / echo chunks).
    head: Option<String>,
    /// Logprobs of tokens not yet sent, per choice (held while their text is incomplete).
    pending_lps: Vec<Vec<TokenLogprob>>,
    /// Where the next token's text starts, per choice (completions' text_offset).
    offsets: Vec<usize>,
    logprobs: bool,
    /// Without a tokenizer every delta is empty text: send a chunk per token anyway, so the
    /// client sees progress (and a disconnect is noticed at the next write).
    chunk_empty: bool,
    /// Per chat choice: splits reasoning, content and tool calls.
    parsers: Vec<Option<tools::ChoiceParser>>,
}

/// How long a stream may be silent (queued, prefilling) before a comment keeps it alive:
/// proxies and clients with read timeouts would otherwise drop it.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A chat delta of what a parser gave.
fn chat_delta(p: &tools::Parsed) -> Value {
    let mut d = serde_json::Map::new();
    if !p.reasoning.is_empty() {
        d.insert("reasoning_content".into(), json!(p.reasoning));
    }
    if !p.content.is_empty() {
        d.insert("content".into(), json!(p.content));
    }
    if !p.calls.is_empty() {
        d.insert("tool_calls".into(), Value::Array(p.calls.clone()));
    }
    Value::Object(d)
}

pub(super) fn frame(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

impl Sse {
    fn chunk(&self, choice: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.kind.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn choice(&self, i: usize, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => json!({
                "index": i,
                "delta": match text { Some(t) => json!({ "content": t }), None => json!({}) },
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Text => json!({
                "index": i,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }

    /// The frames for one event (empty when there is nothing to tell the client yet).
    fn on_event(&mut self, i: usize, ev: Event) -> String {
        let mut out = String::new();
        match ev {
            Event::Delta {
                text,
                token_ids,
                logprobs,
            } => {
                self.timing[i].token(&self.st, token_ids.len());
                self.completion_tokens += token_ids.len();
                self.pending_lps[i].extend(logprobs);
                if let Some(p) = self.parsers[i].as_mut() {
                    let parsed = p.feed(&text);
                    if !parsed.is_empty() || (self.chunk_empty && !token_ids.is_empty()) {
                        let mut c = self.choice(i, None, None);
                        c["delta"] = chat_delta(&parsed);
                        c["logprobs"] = self.take_logprobs(i);
                        frame(&mut out, &self.chunk(c));
                    }
                } else if !text.is_empty() || (self.chunk_empty && !token_ids.is_empty()) {
                    let mut c = self.choice(i, Some(&text), None);
                    c["logprobs"] = self.take_logprobs(i);
                    frame(&mut out, &self.chunk(c));
                }
            }
            Event::Finished { reason, usage } => {
                self.timing[i].finished(&self.st, &usage);
                if i == 0 {
                    self.cached_tokens = usage.cached_tokens;
                }
                let mut finish = reason_str(reason);
                if let Some(p) = self.parsers[i].as_mut() {
                    // Text held back (a possible marker, an unfinished call) goes out now.
                    let parsed = p.finish();
                    let called = p.called();
                    if !parsed.is_empty() {
                        let mut c = self.choice(i, None, None);
                        c["delta"] = chat_delta(&parsed);
                        c["logprobs"] = self.take_logprobs(i);
                        frame(&mut out, &self.chunk(c));
                    }
                    if called && reason != FinishReason::Length {
                        finish = "tool_calls";
                    }
                }
                let mut c = self.choice(i, None, Some(finish));
                if !self.pending_lps[i].is_empty() {
                    c["logprobs"] = self.take_logprobs(i);
                }
                frame(&mut out, &self.chunk(c));
            }
            Event::Failed(e) => {
                frame(&mut out, &failed(e).body());
            }
        }
        out
    }

    fn take_logprobs(&mut self, i: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.pending_lps[i]);
        match self.kind {
            Kind::Chat => chat_logprobs(&self.st, &lps),
            Kind::Text => text_logprobs(&self.st, &lps, &mut self.offsets[i]),
        }
    }

    fn tail(&self) -> String {
        let mut out = String::new();
        if self.include_usage {
            let v = json!({
                "id": self.id,
                "object": self.kind.object(true),
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(self.prompt_tokens, self.completion_tokens, self.cached_tokens),
            });
            frame(&mut out, &v);
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

/// Streams Server-Sent Events; dropping the body (client gone) drops the handles (abort).
pub(super) fn sse(st: Arc<AppState>, job: Job) -> Response {
    let n = job.handles.len();
    let streams: Vec<BoxStream<'static, (usize, Event)>> = job
        .handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.map(move |e| (i, e)).boxed())
        .collect();
    let mut s = Sse {
        st,
        kind: job.kind,
        id: job.id,
        created: job.created,
        model: job.model,
        prompt_tokens: job.prompt_tokens,
        include_usage: job.include_usage,
        events: futures::stream::select_all(streams),
        timing: (0..n).map(|_| Timing::new(job.tally.clone())).collect(),
        completion_tokens: 0,
        cached_tokens: 0,
        head: None,
        pending_lps: vec![Vec::new(); n],
        offsets: vec![job.echo.as_deref().map_or(0, |e| e.chars().count()); n],
        logprobs: job.logprobs,
        chunk_empty: false,
        parsers: (0..n)
            .map(|_| job.chat.as_ref().map(tools::ChoiceParser::new))
            .collect(),
    };
    s.chunk_empty = s.st.engine.tokenizer().is_none();
    let mut head = String::new();
    for i in 0..n {
        let c = match (s.kind, &job.echo) {
            (Kind::Chat, _) => json!({
                "index": i,
                "delta": { "role": "assistant", "content": "" },
                "logprobs": null,
                "finish_reason": null,
            }),
            (Kind::Text, Some(echo)) => s.choice(i, Some(echo), None),
            (Kind::Text, None) => continue,
        };
        frame(&mut head, &s.chunk(c));
    }
    s.head = (!head.is_empty()).then_some(head);
    let body = futures::stream::unfold(Some(s), |state| async move {
        let mut s = state?;
        if let Some(h) = s.head.take() {
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(h)), Some(s)));
        }
        loop {
            let Ok(next) = tokio::time::timeout(KEEP_ALIVE, s.events.next()).await else {
                // An SSE comment: clients ignore it; the connection stays busy.
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(s)));
            };
            match next {
                Some((i, ev)) => {
                    let out = s.on_event(i, ev);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some(s)));
                    }
                }
                None => {
                    let out = s.tail();
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        }
    });
    event_stream(body)
}

/// A `text/event-stream` answer whose body is `frames`, sent as they come.
pub(super) fn event_stream<S>(frames: S) -> Response
where
    S: futures::TryStream + Send + 'static,
    S::Ok: Into<Bytes>,
    S::Error: Into<axum::BoxError>,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
