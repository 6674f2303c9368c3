//! Commands that work without a running stack.

use std::io::Write as _;

use crate::{example_channels, smsgate, stderr, stdout};

const PATH_TOKEN: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";

fn example_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TWILIO_AUTH_TOKEN", "local-auth-token"),
        ("SMS_WEBHOOK_PATH_TOKEN", PATH_TOKEN),
        ("SMSGATE_PUBLIC_BASE_URL", "https://sms.example.com"),
    ]
}

#[test]
fn gen_token_prints_a_fresh_usable_token() {
    let a = smsgate(&["gen-token"], &[]);
    let b = smsgate(&["gen-token"], &[]);
    assert_eq!(a.status.code(), Some(0));
    let token = stdout(&a).trim().to_owned();
    assert_eq!(token.len(), 48, "{token}");
    assert!(token.bytes().all(|c| c.is_ascii_alphanumeric()), "{token}");
    assert_ne!(token, stdout(&b).trim());
}

#[test]
fn check_config_accepts_the_example_file_and_prints_each_webhook_url() {
    let out = smsgate(&["check-config", &example_channels()], &example_env());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("configuration OK: 1 channel"), "{text}");
    assert!(text.contains(&format!("https://sms.example.com/api/channels/sms/twilio/webhook/{PATH_TOKEN}")), "{text}");
    assert!(text.contains("local") && text.contains("echo") && text.contains("log"), "{text}");
    assert!(text.contains("local: at most 30 replies a minute, 1000 a UTC day; replies to calling codes 1"), "{text}");
    assert!(!text.contains("local-auth-token"), "the auth token must never be printed: {text}");
}

#[test]
fn check_config_reads_smsgate_channels_when_no_file_is_given() {
    let mut env = example_env();
    let file = example_channels();
    env.push(("SMSGATE_CHANNELS", &file));
    let out = smsgate(&["check-config", "--json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["channels"][0]["channel_id"], "local");
    assert_eq!(v["channels"][0]["chat"], "echo");
    assert_eq!(v["channels"][0]["delivery"], "log");
    assert_eq!(v["channels"][0]["limits"]["replies_per_day"], 1000);
    assert_eq!(v["channels"][0]["reply_countries"], serde_json::json!(["1"]));
}

#[test]
fn check_config_warns_about_unknown_keys_with_the_likely_typo() {
    let example: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example_channels()).unwrap()).unwrap();
    let mut channel = example.get("channels").and_then(|c| c.get(0)).cloned().unwrap_or(example);
    channel["config"]["rate_limt"] = serde_json::json!({"per_minute": 5});
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "{channel}").unwrap();
    let path = file.path().to_str().unwrap();
    let out = smsgate(&["check-config", path], &example_env());
    assert_eq!(out.status.code(), Some(0), "a warning, not an error: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("warning: channel local: unknown key config.rate_limt (did you mean config.rate_limit?)"),
        "{text}"
    );
    let out = smsgate(&["check-config", "--json", path], &example_env());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["channels"][0]["unknown_keys"][0], "config.rate_limt (did you mean config.rate_limit?)");
}

#[test]
fn check_config_names_every_problem_with_its_key_and_exits_64() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"[{{"channel_id": "broken", "config": {{"twilio_account_sid": "AC12", "twilio_auth_token": "t",
              "twilio_from_number": "5551234567", "webhook_path_token": "short",
              "chat": {{"kind": "gpt"}} }} }}]"#
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let out = smsgate(&["check-config", &path], &[]);
    assert_eq!(out.status.code(), Some(64));
    let text = stderr(&out);
    for key in ["config.twilio_account_sid", "config.twilio_from_number", "config.webhook_path_token", "config.chat"] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    assert!(text.contains("channel broken"), "{text}");
    assert!(text.contains(&path), "the file is named: {text}");

    let json = smsgate(&["check-config", "--json", &path], &[]);
    assert_eq!(json.status.code(), Some(64));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["problems"].as_array().unwrap().iter().any(|p| p["key"] == "config.webhook_path_token"), "{v}");
}

#[test]
fn check_config_reports_missing_variables_and_unreadable_files() {
    let out = smsgate(&["check-config", &example_channels()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let text = stderr(&out);
    assert!(text.contains("TWILIO_AUTH_TOKEN") && text.contains("SMS_WEBHOOK_PATH_TOKEN"), "{text}");

    let out = smsgate(&["check-config", "/nonexistent/channels.json"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("cannot read the file"), "{}", stderr(&out));
}

#[test]
fn without_a_channel_file_the_twilio_variables_make_one_channel() {
    let env = [
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("TWILIO_PHONE_NUMBER", "+15551234567"),
        ("SMS_WEBHOOK_PATH_TOKEN", PATH_TOKEN),
        ("SMSGATE_PUBLIC_BASE_URL", "https://sms.example.com/"),
    ];
    // The channel answers with a fixed acknowledgement (the variables cannot
    // name a chat), so it loads and its URL is printed.
    let out = smsgate(&["webhook-url", "--channel", "default"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("https://sms.example.com/api/channels/sms/twilio/webhook/{PATH_TOKEN}"));
}

#[test]
fn webhook_url_voice_prints_the_call_comes_in_url_and_check_config_names_bad_voice_keys() {
    let env = [
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("TWILIO_PHONE_NUMBER", "+15551234567"),
        ("SMS_WEBHOOK_PATH_TOKEN", PATH_TOKEN),
        ("SMSGATE_PUBLIC_BASE_URL", "https://sms.example.com"),
    ];
    let out = smsgate(&["webhook-url", "--channel", "default", "--voice"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("https://sms.example.com/api/channels/voice/twilio/call/{PATH_TOKEN}"));
    assert!(stderr(&out).contains("voice is not enabled"), "{}", stderr(&out));

    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"{{"channel_id": "phone", "config": {{"twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
              "twilio_auth_token": "t", "twilio_from_number": "+15551234567", "chat": {{"kind": "echo"}},
              "webhook_path_token": "{PATH_TOKEN}",
              "voice": {{"enabled": true, "mode": "forward", "voice": "<Dial>", "language": "-"}} }} }}"#
    )
    .unwrap();
    let out = smsgate(&["check-config", file.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stdout(&out));
    let text = stderr(&out);
    for key in ["config.voice.voice", "config.voice.language", "config.voice.forward_to"] {
        assert!(text.contains(&format!("channel phone: {key}:")), "{key} missing from: {text}");
    }
}

#[test]
fn check_config_reports_the_abuse_limits_pacing_and_chat_problems_by_key() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"[{{"channel_id": "costly", "config": {{"twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
              "twilio_auth_token": "t", "twilio_from_number": "+15551234567",
              "webhook_path_token": "{PATH_TOKEN}", "mps": 1e-300,
              "limits": {{"replies_per_minute": 0}}, "reply_countries": ["+1", "x"] }} }}]"#
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let out = smsgate(&["check-config", &path], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stdout(&out));
    let text = stderr(&out);
    for key in ["config.mps", "config.limits", "config.reply_countries", "config.chat"] {
        assert!(text.contains(&format!("channel costly: {key}:")), "{key} missing from: {text}");
    }
}

#[test]
fn simulate_never_prints_the_path_token_when_ingress_is_unreachable() {
    let file = example_channels();
    let port = smsgate_testkit::nats::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = ["simulate", "--channel", "local", "--from", "+15551230000", "--body", "hi", "--url", &url];
    let out = smsgate(&args, &example_env_with(&file));
    assert_eq!(out.status.code(), Some(1));
    let (err, text) = (stderr(&out), stdout(&out));
    assert!(err.contains("cannot reach ingress"), "{err}");
    assert!(!err.contains(PATH_TOKEN) && !text.contains(PATH_TOKEN), "the secret path token was printed: {err}{text}");
}

#[test]
fn webhook_url_needs_a_public_base_url() {
    let file = example_channels();
    let mut env = example_env();
    env.push(("SMSGATE_CHANNELS", &file));
    let out = smsgate(&["webhook-url", "--channel", "local"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).trim().ends_with(PATH_TOKEN));

    env.retain(|(k, _)| *k != "SMSGATE_PUBLIC_BASE_URL");
    let out = smsgate(&["webhook-url", "--channel", "local"], &env);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("SMSGATE_PUBLIC_BASE_URL"), "{}", stderr(&out));

    let out = smsgate(&["webhook-url", "--channel", "nope"], &example_env_with(&file));
    assert_eq!(out.status.code(), Some(2), "an unknown channel is a usage error: {}", stderr(&out));
}

fn example_env_with(file: &str) -> Vec<(&str, &str)> {
    let mut env = example_env();
    env.push(("SMSGATE_CHANNELS", file));
    env
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(smsgate(&["no-such-command"], &[]).status.code(), Some(2));
    assert_eq!(smsgate(&["send", "--channel", "x"], &[]).status.code(), Some(2));
    assert_eq!(smsgate(&["dead", "replay", "not-a-number"], &[]).status.code(), Some(2));
    let out = smsgate(&["conversation", "--channel", "local", "5551234"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn an_unreachable_admin_api_is_a_failed_operation() {
    let port = smsgate_testkit::nats::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = smsgate(&["conversations"], &[("SMSGATE_ADMIN_URL", &url)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the admin API"), "{}", stderr(&out));
}

#[test]
fn check_config_refuses_an_api_base_that_would_send_credentials_elsewhere() {
    let channel = |id: &str, base: &str, extra: &str| {
        format!(
            r#"{{"channel_id": "{id}", "config": {{"twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
                "twilio_auth_token": "tok", "twilio_from_number": "+15551234567",
                "webhook_path_token": "{id}-path-token-0123456789abcdefghijklmnop", "chat": {{"kind": "echo"}},
                "twilio_api_base": "{base}"{extra} }} }}"#
        )
    };
    let write = |channels: &[String]| {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "[{}]", channels.join(",")).unwrap();
        file
    };
    let bad = write(&[
        channel("metadata", "https://169.254.169.254", ""),
        channel("lan", "https://192.168.1.20:8443", ""),
        channel("creds", "https://user:pw@api.twilio.com", ""),
        channel("plain", "http://api.twilio.com", ""),
    ]);
    let out = smsgate(&["check-config", bad.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let text = stderr(&out);
    for (id, why) in [
        ("metadata", "allow_private_api_base"),
        ("lan", "allow_private_api_base"),
        ("creds", "user or password"),
        ("plain", "must be https://"),
    ] {
        let line = text.lines().find(|l| l.contains(&format!("channel {id}"))).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("config.twilio_api_base") && line.contains(why), "{id}: {line}");
    }
    assert!(!text.contains(":pw@"), "{text}");

    let allowed = write(&[
        channel("proxy", "https://10.0.0.5", r#", "allow_private_api_base": true"#),
        channel("stub", "http://127.0.0.1:9000", ""),
    ]);
    let out = smsgate(&["check-config", allowed.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
