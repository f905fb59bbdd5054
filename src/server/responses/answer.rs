//! Answering a `/v1/responses` request: the Response object once the text is complete, or
//! the typed Server-Sent Events of a streamed response.

use super::*;
use respond::{Timing, event_stream};
use serde_json::Map;

/// Answers a submitted request: the Response object when it is done, or its events as they
/// happen. `echo`: the request's own values, answered as sent.
pub(super) async fn answer(
    st: Arc<AppState>,
    job: Job,
    echo: Map<String, Value>,
    stream: bool,
) -> Result<Response, ApiError> {
    let meta = Meta {
        id: format!("resp_{:016x}{:016x}", random_u64(), random_u64()),
        msg_id: format!("msg_{:016x}{:016x}", random_u64(), random_u64()),
        created_at: job.created,
        model: job.model.clone(),
        echo,
    };
    let prompt_tokens = job.prompt_tokens;
    let tally = job.tally.clone();
    let Some(handle) = job.handles.into_iter().next() else {
        return Err(failed("the engine returned no request handle".into()));
    };
    let g = Gen {
        st,
        handle,
        meta,
        prompt_tokens,
        timing: Timing::new(tally),
        text: String::new(),
        tokens: 0,
    };
    if stream {
        Ok(sse(g))
    } else {
        collect(g).await.map(|v| axum::Json(v).into_response())
    }
}

/// What the Response object carries besides its output.
struct Meta {
    id: String,
    msg_id: String,
    created_at: u64,
    model: String,
    /// The request's own values (instructions, metadata, sampling...), answered as sent.
    echo: Map<String, Value>,
}

/// How a response ended.
enum End {
    Done(FinishReason),
    Failed(String),
}

impl Meta {
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        json!({
            "type": "message",
            "id": self.msg_id,
            "status": status,
            "role": "assistant",
            "content": match text {
                Some(t) => json!([part(t)]),
                None => json!([]),
            },
        })
    }

    /// The Response object; `text` and `usage` once generation has ended.
    fn response(&self, end: Option<&End>, text: &str, usage: Option<Value>) -> Value {
        let (status, incomplete, error, output) = match end {
            None => ("in_progress", Value::Null, Value::Null, json!([])),
            Some(End::Done(FinishReason::Stop)) => (
                "completed",
                Value::Null,
                Value::Null,
                json!([self.message("completed", Some(text))]),
            ),
            // Length: cut at max_output_tokens.
            Some(End::Done(_)) => (
                "incomplete",
                json!({ "reason": "max_output_tokens" }),
                Value::Null,
                json!([self.message("incomplete", Some(text))]),
            ),
            Some(End::Failed(e)) => (
                "failed",
                Value::Null,
                json!({ "code": "server_error", "message": e }),
                json!([]),
            ),
        };
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "previous_response_id": null,
            "reasoning": { "effort": null, "summary": null },
            "store": false,
            "tools": [],
            "top_logprobs": 0,
            "max_tool_calls": null,
            "usage": usage,
        });
        if status == "completed" {
            v["completed_at"] = json!(unix_now());
        }
        for (k, x) in &self.echo {
            v[k] = x.clone();
        }
        v
    }
}

fn part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

fn usage(prompt: usize, output: usize, cached: usize) -> Value {
    json!({
        "input_tokens": prompt,
        // The client's model requires `cache_write_tokens`; the prefix cache does not count them.
        "input_tokens_details": { "cached_tokens": cached, "cache_write_tokens": 0 },
        "output_tokens": output,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": prompt + output,
    })
}

/// One generation in flight: the engine's stream and what has come out of it so far.
/// Dropping it drops the handle, which aborts the request and frees its KV blocks.
struct Gen {
    st: Arc<AppState>,
    handle: RequestHandle,
    meta: Meta,
    prompt_tokens: usize,
    timing: Timing,
    text: String,
    tokens: usize,
}

impl Gen {
    /// The next piece of text (possibly empty), or how it ended.
    async fn next(&mut self) -> Result<String, (End, Value)> {
        match self.handle.next().await {
            Some(Event::Delta {
                text, token_ids, ..
            }) => {
                self.count(token_ids.len());
                self.text.push_str(&text);
                Ok(text)
            }
            Some(Event::Finished { reason, usage: u }) => {
                self.timing.finished(&self.st, &u);
                let usage = usage(self.prompt_tokens, self.tokens, u.cached_tokens);
                Err((End::Done(reason), usage))
            }
            Some(Event::Failed(e)) => Err((End::Failed(e), Value::Null)),
            None => Err((End::Failed("the engine stopped".into()), Value::Null)),
        }
    }

    /// The access log's and the metrics' token counts (as the chat path keeps them).
    fn count(&mut self, n: usize) {
        self.tokens += n;
        self.timing.token(&self.st, n);
    }
}

/// Waits for the whole text and answers the Response object.
async fn collect(mut g: Gen) -> Result<Value, ApiError> {
    loop {
        match g.next().await {
            Ok(_) => {}
            Err((End::Failed(e), _)) => return Err(failed(e)),
            Err((end, usage)) => return Ok(g.meta.response(Some(&end), &g.text, Some(usage))),
        }
    }
}

/// The Server-Sent Events of a streamed response: each frame `event: <type>` and a `data:`
/// object carrying the same `type` and an increasing `sequence_number`.
struct Events {
    out: String,
    seq: u64,
}

impl Events {
    fn push(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.out.push_str("event: ");
        self.out.push_str(kind);
        self.out.push_str("\ndata: ");
        self.out.push_str(&data.to_string());
        self.out.push_str("\n\n");
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.out))
    }
}

/// The frames that end a stream: the text and message done, then the final Response.
fn finish(m: &Meta, text: &str, ev: &mut Events, end: End, usage: Value) {
    if let End::Failed(_) = end {
        ev.push(
            "response.failed",
            json!({ "response": m.response(Some(&end), text, None) }),
        );
        return;
    }
    let at = |v: Value| {
        let mut v = v;
        v["item_id"] = json!(m.msg_id);
        v["output_index"] = json!(0);
        v["content_index"] = json!(0);
        v
    };
    ev.push(
        "response.output_text.done",
        at(json!({ "text": text, "logprobs": [] })),
    );
    ev.push(
        "response.content_part.done",
        at(json!({ "part": part(text) })),
    );
    let (item_status, last) = match end {
        End::Done(FinishReason::Stop) => ("completed", "response.completed"),
        // As OpenAI: a response cut at max_output_tokens ends with `response.incomplete`.
        _ => ("incomplete", "response.incomplete"),
    };
    ev.push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": m.message(item_status, Some(text)) }),
    );
    ev.push(
        last,
        json!({ "response": m.response(Some(&end), text, Some(usage)) }),
    );
}

fn sse(g: Gen) -> Response {
    let mut ev = Events {
        out: String::new(),
        seq: 0,
    };
    let m = &g.meta;
    let r = m.response(None, "", None);
    ev.push("response.created", json!({ "response": r }));
    ev.push("response.in_progress", json!({ "response": r }));
    ev.push(
        "response.output_item.added",
        json!({ "output_index": 0, "item": m.message("in_progress", None) }),
    );
    ev.push(
        "response.content_part.added",
        json!({ "item_id": m.msg_id, "output_index": 0, "content_index": 0, "part": part("") }),
    );
    let body = futures::stream::unfold(Some((g, ev)), |state| async move {
        let (mut g, mut ev) = state?;
        // The head frames go out before the first token: the client sees the response start.
        if !ev.out.is_empty() {
            let b = ev.take();
            return Some((Ok::<_, std::convert::Infallible>(b), Some((g, ev))));
        }
        loop {
            match g.next().await {
                Ok(delta) if delta.is_empty() => {}
                Ok(delta) => {
                    ev.push(
                        "response.output_text.delta",
                        json!({
                            "item_id": g.meta.msg_id,
                            "output_index": 0,
                            "content_index": 0,
                            "delta": delta,
                            "logprobs": [],
                        }),
                    );
                    let b = ev.take();
                    return Some((Ok(b), Some((g, ev))));
                }
                Err((end, usage)) => {
                    finish(&g.meta, &g.text, &mut ev, end, usage);
                    return Some((Ok(ev.take()), None));
                }
            }
        }
    });
    event_stream(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "resp_1".into(),
            msg_id: "msg_1".into(),
            created_at: 1,
            model: "m".into(),
            echo: Map::new(),
        }
    }

    /// The (event name, data) frames written so far.
    fn frames(ev: &mut Events) -> Vec<(String, Value)> {
        let out = String::from_utf8(ev.take().to_vec()).unwrap();
        out.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (name, data) = f
                    .strip_prefix("event: ")
                    .and_then(|f| f.split_once("\ndata: "))
                    .unwrap();
                (name.to_string(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn an_engine_failure_mid_stream_ends_with_response_failed() {
        let mut ev = Events {
            out: String::new(),
            seq: 7,
        };
        finish(
            &meta(),
            "partial",
            &mut ev,
            End::Failed("boom".into()),
            Value::Null,
        );
        let f = frames(&mut ev);
        assert_eq!(f.len(), 1);
        let (name, data) = &f[0];
        assert_eq!(name, "response.failed");
        assert_eq!(data["type"], "response.failed");
        assert_eq!(data["sequence_number"], 7);
        let r = &data["response"];
        assert_eq!(r["status"], "failed");
        assert_eq!(r["error"]["code"], "server_error");
        assert_eq!(r["error"]["message"], "boom");
    }

    #[test]
    fn a_finished_stream_closes_text_part_item_then_response() {
        let mut ev = Events {
            out: String::new(),
            seq: 4,
        };
        finish(
            &meta(),
            "Paris.",
            &mut ev,
            End::Done(FinishReason::Stop),
            usage(3, 2, 0),
        );
        let f = frames(&mut ev);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (_, d)) in f.iter().enumerate() {
            assert_eq!(d["sequence_number"], 4 + i);
        }
        let r = &f[3].1["response"];
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Paris.");
        assert_eq!(r["usage"]["total_tokens"], 5);
    }
}
