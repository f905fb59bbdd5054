//! `POST /v1/responses`: the text subset of OpenAI's Responses API that the official clients'
//! `responses.create(...)` uses: `input` as a string or a list of message items, `instructions`,
//! `max_output_tokens`, `temperature`, `top_p`, and `stream` (typed Server-Sent Events).
//!
//! `text.format` (`json_schema`, `json_object`) constrains the output as chat's
//! `response_format` does. Nothing is stored: `previous_response_id`, `conversation` and
//! `background` need stored state and are refused, as are tools and reasoning (400 naming the
//! field). The chat path's extensions (`seed`, `top_k`, `stop`, `logit_bias`, …) go through
//! [`openai::Common`], so they are honoured or refused exactly as there.

mod answer;
mod request;

use super::*;

pub(super) async fn create(State(st): St, req: HttpRequest) -> Response {
    let (tally, body) = tally_and_body(req);
    match create_inner(st, tally, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    st: Arc<AppState>,
    tally: Option<Arc<Tally>>,
    body: Body,
) -> Result<Response, ApiError> {
    let b = openai::parse(&read_body(&st.opts, body).await?)?;
    let req = request::parse_request(b)?;
    check_model(&st, &req.common.model)?;
    let p = req.common.params(true).map_err(|mut e| {
        // `text.format` reached the shared checks as `response_format`.
        if req.text_format && e.param == Some("response_format") {
            e.param = Some("text.format");
        }
        e
    })?;
    // Refused above when not 1; one handle is what the answer below reads.
    if p.n != 1 {
        return Err(ApiError::param("n must be 1", "n"));
    }
    let bytes = req
        .messages
        .iter()
        .map(|m| m.role.len() + m.text().len())
        .sum();
    check_prompt_bytes(&st.opts, bytes, "input")?;
    let ids = tokenize(&st, Prompt::Chat(req.messages)).await?;
    let max_tokens = completion_budget(&st, ids.len(), &p).map_err(|mut e| {
        // The shared check speaks chat's name for the budget.
        if e.param == Some("max_tokens") {
            e.param = Some("max_output_tokens");
            e.message = e.message.replace("completion length", "max_output_tokens");
        }
        e
    })?;
    let job = submit(&st, Kind::Chat, ids, max_tokens, &p, None, tally)?;
    answer::answer(st, job, req.echo, p.stream).await
}
