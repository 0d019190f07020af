//! Messages that cannot be delivered go to `<queue>.dead` with their reason, never back to the
//! queue (contract section 2).

use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::json;

use crate::support::{Settings, TestApp, skip, stream_off};

#[tokio::test]
async fn each_kind_of_bad_message_is_dead_lettered_intact_with_its_reason() {
    let app = TestApp::spawn(Settings::rabbit().var("MAX_MESSAGE_BYTES", "1024")).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let too_large = format!(r#"{{"type":"t","data":"{}"}}"#, "x".repeat(2000));
    let cases: [(&str, &[u8]); 7] = [
        ("not_json", b"{oops"),
        ("not_object", b"[1,2,3]"),
        ("missing_type", br#"{"data":{}}"#),
        ("too_large", too_large.as_bytes()),
        ("invalid_room", br#"{"type":"t","rooms":["lobby"]}"#),
        (
            "invalid_room",
            br#"{"type":"t","recipients":["not valid"]}"#,
        ),
        ("invalid_field", br#"{"type":"t","recipients":"123"}"#),
    ];
    for (i, (reason, body)) in cases.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert("x-producer".into(), AMQPValue::LongString("billing".into()));
        let properties = lapin::BasicProperties::default()
            .with_message_id(ShortString::from(format!("bad-{i}")))
            .with_content_type("application/json".into())
            .with_headers(headers);
        app.publish_with("notification.session", body, properties)
            .await;

        let dead = app.next_message(&app.dead_queue()).await;
        let delivery = &dead.delivery;
        assert_eq!(&delivery.data, body, "{reason}: body intact");
        let props = &delivery.properties;
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some(format!("bad-{i}").as_str())
        );
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        let headers = props.headers().as_ref().expect("headers");
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(header("x-notify-bridge-reason"), *reason, "case {i}");
        assert_eq!(header("x-producer"), "billing", "original headers kept");
    }

    // The consumer went on: a good message after all the bad ones is delivered, nothing is
    // left in (or requeued to) the main queue, and nothing bad was emitted.
    app.publish_json("notification.customer", json!({ "type": "after-bad-ones" }))
        .await;
    assert_eq!(cms.next().await["type"], "after-bad-ones");
    assert_eq!(app.queue_depth(&app.queue).await, 0);
    assert_eq!(
        app.queue_depth(&app.dead_queue()).await,
        0,
        "exactly one dead letter per bad message"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_queue_is_declared_with_its_dead_letter_exchange() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    // Declaring with exactly the contract's arguments succeeds only if they match.
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{}.dlx", app.queue).into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // Contract v3: a quorum queue unless RABBITMQ_QUEUE_TYPE says classic.
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    app.channel()
        .queue_declare(app.queue.as_str().into(), durable, args)
        .await
        .expect("same arguments");
    // And the stream every instance reads (contract v2 section 2).
    if stream_off() {
        skip("its stream part: NB_TEST_STREAM=off runs without a stream");
        app.stop().await;
        return;
    }
    let mut stream = FieldTable::default();
    stream.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    stream.insert("x-max-age".into(), AMQPValue::LongString("24h".into()));
    app.channel()
        .queue_declare(
            format!("{}.log", app.queue).as_str().into(),
            durable,
            stream,
        )
        .await
        .expect("the stream is declared with the contract's arguments");
    app.stop().await;
}
