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

    // A key beside "channels" in a {"channels": [...]} file is warned about too.
    let mut wrapped = tempfile::NamedTempFile::new().unwrap();
    write!(wrapped, "{}", serde_json::json!({"channels": [channel], "versoin": 2})).unwrap();
    let out = smsgate(&["check-config", wrapped.path().to_str().unwrap()], &example_env());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(r#"unknown key versoin (beside "channels" at the top of the file)"#), "{text}");
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
    // Not silently: check-config says which chat it gets and how to choose one.
    let out = smsgate(&["check-config"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("1 channel from the TWILIO_* variables"), "{text}");
    assert!(text.contains("warning: channel default") && text.contains("chat \"static\""), "{text}");
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

    // Not in the file, and no running ingress to ask about a runtime channel.
    let port = smsgate_testkit::nats::free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let mut env = example_env_with(&file);
    env.push(("SMSGATE_ADMIN_URL", &admin));
    let out = smsgate(&["webhook-url", "--channel", "nope"], &env);
    assert_eq!(out.status.code(), Some(2), "an unknown channel is a usage error: {}", stderr(&out));
    assert!(stderr(&out).contains(r#"no channel "nope" in the configuration (channels: local)"#), "{}", stderr(&out));
    assert!(stderr(&out).contains("the running ingress could not be asked either"), "{}", stderr(&out));
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

#[test]
fn usage_errors_quote_what_the_operator_typed() {
    let file = example_channels();
    let out = smsgate(&["simulate", "--channel", "local", "--from", "alice", "--body", "hi"], &example_env_with(&file));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(r#"--from: "alice" must start with '+'"#), "{}", stderr(&out));
    let out = smsgate(&["conversation", "--channel", "local", "5551230000"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(r#"PEER: "5551230000" must start with '+'"#), "{}", stderr(&out));
    let out = smsgate(&["pause", "--channel", "local", "+0123"], &[]);
    assert!(stderr(&out).contains(r#"PEER: "+0123" must be '+' and 7 to 15 digits"#), "{}", stderr(&out));
    // `call` names both ways to say something.
    let out = smsgate(&["call", "--channel", "local", "--to", "+14155550100"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--say") && stderr(&out).contains("--twiml"), "{}", stderr(&out));
}

#[test]
fn check_config_rows_line_up_with_their_headers() {
    let out = smsgate(&["check-config", &example_channels()], &example_env());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().find(|l| l.starts_with("CHANNEL")).unwrap_or_else(|| panic!("no table: {text}"));
    let row = text.lines().find(|l| l.starts_with("local ")).unwrap_or_else(|| panic!("no row: {text}"));
    for (column, cell) in [("ENABLED", "yes"), ("FROM", "+15005550006"), ("CHAT", "echo"), ("DELIVERY", "log")] {
        let at = header.find(column).unwrap_or_else(|| panic!("no {column} in {header}"));
        assert_eq!(row.get(at..at + cell.len()), Some(cell), "{column}:\n{header}\n{row}");
    }
    assert!(header.ends_with("WEBHOOK URL"), "{header}");
    assert!(text.starts_with(&format!("configuration OK: 1 channel from {}", example_channels())), "{text}");
}

#[test]
fn admin_api_flags_show_only_on_commands_that_use_the_admin_api() {
    for local in [&["check-config", "--help"][..], &["gen-token", "--help"]] {
        let help = stdout(&smsgate(local, &[]));
        assert!(!help.contains("--token") && !help.contains("--admin-url"), "{help}");
    }
    let help = stdout(&smsgate(&["send", "--help"], &[]));
    assert!(help.contains("--token") && help.contains("--admin-url"), "{help}");
    // Every flag and argument says what it is.
    for command in ["send", "call", "conversations", "conversation", "pause", "simulate", "check-config"] {
        let help = stdout(&smsgate(&[command, "--help"], &[]));
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let flag = line.trim_start();
            if !(flag.starts_with("--") || flag.starts_with('<') || flag.starts_with("-h")) || !line.starts_with("  ") {
                continue;
            }
            // The help on the same line, or on the next, indented further.
            let same_line = flag.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_line = next.starts_with("          ") && !next.trim_start().starts_with('-');
            assert!(same_line || next_line, "{command}: no help for: {line}\n{help}");
        }
    }
}
