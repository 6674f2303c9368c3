//! Human takeover: while an operator has paused the bot for a conversation
//! (an entry in `P_conversations`, as the admin API writes it), every worker
//! records that person's messages without calling the model; STOP and HELP
//! still work, other people are answered, and the bot answers again once the
//! pause has run out.

use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, ConversationState, NoteReason, Origin, VERSION};
use smsgate_shared::topology::Topology;
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;
use time::OffsetDateTime;

use crate::helpers::{Second, TestWorker, inbound, kinds, test_tuning};

const PAUSED: &str = "+14155550301";
const OTHER: &str = "+14155550302";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_conversation_is_recorded_not_answered_by_any_worker_until_the_pause_ends() {
    let model = OpenAiStub::start().await;
    let chat = format!(r#""chat": {{"kind": "openai", "base_url": "{}", "model": "stub"}}"#, model.base_url());
    let mut w = TestWorker::start_with(vec![channel(&chat)], test_tuning()).await;
    // A second worker on the same NATS and prefix: the pause holds for both.
    let second = Second::start(&w, &chat).await;

    let store = w.bus.js.get_key_value(w.bus.topology.conversations_bucket()).await.unwrap();
    let key = Topology::conversation_key(&ChannelId::parse("test").unwrap(), &E164::parse(PAUSED).unwrap());
    let now = OffsetDateTime::now_utc();
    let pause =
        |secs: i64| ConversationState { v: VERSION, paused_until: now + time::Duration::seconds(secs), paused_at: now };
    store.put(&key, envelope::encode(&pause(3600))).await.unwrap();

    for i in 0..6 {
        w.bus.send(&inbound("test", &format!("SMpaused{i}"), PAUSED, &format!("are you there? {i}"))).await;
    }
    w.bus.send(&inbound("test", "SMpausedhelp", PAUSED, "HELP")).await;
    w.bus.send(&inbound("test", "SMother", OTHER, "hello")).await;
    w.bus.wait_drained().await;

    let out = w.bus.outbound().await;
    let to_paused: Vec<Origin> = out.iter().filter(|o| o.to.as_str() == PAUSED).map(|o| o.origin).collect();
    assert_eq!(to_paused, [Origin::Help], "only HELP is answered while paused: {out:#?}");
    assert!(out.iter().any(|o| o.to.as_str() == OTHER && o.origin == Origin::Chat), "others are answered");
    assert_eq!(model.requests().len(), 1, "the model was called for the other person only");
    let history = w.bus.history("test", PAUSED).await;
    let paused_notes = history
        .iter()
        .filter(|e| matches!(&e.event, envelope::HistoryEvent::Note { reason: NoteReason::Paused, .. }))
        .count();
    assert_eq!(paused_notes, 6, "each message recorded with why it got no answer: {:?}", kinds(&history));

    // The pause runs out on its own (here: one that ended a second ago).
    store.put(&key, envelope::encode(&pause(-1))).await.unwrap();
    w.bus.send(&inbound("test", "SMback", PAUSED, "and now?")).await;
    w.bus.wait_outbound(3).await;
    let out = w.bus.outbound().await;
    assert!(
        out.iter().any(|o| o.to.as_str() == PAUSED && o.origin == Origin::Chat),
        "answered by the model once the pause ended: {out:#?}"
    );

    // STOP still works while paused.
    store.put(&key, envelope::encode(&pause(3600))).await.unwrap();
    w.bus.send(&inbound("test", "SMstop", PAUSED, "STOP")).await;
    w.bus.wait_note("test", PAUSED, "SMstop", NoteReason::OptOutKeyword).await;

    second.stop().await;
    w.stop().await;
}
