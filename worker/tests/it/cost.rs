//! Model cost from the answer's `usage` × `pricing.model`, summed in
//! history, and the day's budget stopping model calls (STOP and HELP still
//! answered).

use smsgate_shared::cost::{Basis, CostSum, Item};
use smsgate_shared::envelope::{HistoryEvent, NoteReason, Origin};
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;

use crate::helpers::{TestWorker, inbound};

const DANA: &str = "+14155550141";
const ERIN: &str = "+14155550142";

#[tokio::test]
async fn model_tokens_are_priced_and_a_spent_day_stops_model_calls_but_not_stop_or_help() {
    let model = OpenAiStub::start().await;
    // The stub answers with 1 prompt and 1 completion token: 0.002 + 0.008 USD.
    let config = format!(
        r#"{}, "pricing": {{"model": {{"input_usd_per_mtok": 2000, "output_usd_per_mtok": 8000}}}},
        "limits": {{"replies_per_minute": 100, "replies_per_day": 100, "usd_per_day": 0.025}}"#,
        model.chat_config("")
    );
    let mut w = TestWorker::start(vec![channel(&config)]).await;
    for i in 1..=4 {
        w.bus.send(&inbound("test", &format!("SMcost{i}"), DANA, &format!("question {i}"))).await;
    }
    // Three answers spend 0.03 USD, past 0.025: the fourth is not given to the model.
    let note = w.bus.wait_note("test", DANA, "SMcost4", NoteReason::Budget).await;
    let HistoryEvent::Note { detail, .. } = note.event else { unreachable!() };
    assert!(detail.contains("limits.usd_per_day"), "{detail}");
    assert_eq!(model.requests().len(), 3);

    let history = w.bus.history("test", DANA).await;
    let costs: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Cost { item, reference, units, usd, basis, .. } => {
                Some((*item, reference.clone(), *units, *usd, *basis))
            }
            _ => None,
        })
        .collect();
    assert_eq!(costs.len(), 3, "{costs:?}");
    assert!(costs.iter().all(|(item, _, units, usd, basis)| *item == Item::Model
        && *units == 2
        && usd.is_some_and(|u| (u - 0.01).abs() < 1e-12)
        && *basis == Basis::Usage));
    assert_eq!(costs[0].1, "SMcost1");
    let sum = CostSum::of(history.iter().map(|e| &e.event));
    assert!((sum.model_usd - 0.03).abs() < 1e-9 && (sum.total_usd - 0.03).abs() < 1e-9, "{sum:?}");

    // HELP and STOP are answered without the model, budget or not.
    w.bus.send(&inbound("test", "SMhelp", ERIN, "HELP")).await;
    w.bus.send(&inbound("test", "SMstop", ERIN, "STOP")).await;
    w.bus.wait_note("test", ERIN, "SMstop", NoteReason::OptOutKeyword).await;
    let out = w.bus.wait_outbound(4).await;
    assert!(out.iter().any(|o| o.origin == Origin::Help && o.to.as_str() == ERIN), "{out:?}");
    assert_eq!(model.requests().len(), 3);
    w.stop().await;
}
