//! Checks a Messages API request against Twilio's own OpenAPI description
//! of `CreateMessage` (`twilio_api_v2010.json`, from twilio/twilio-oai), so
//! that what the sender posts is valid by the spec and not only by our stub;
//! the same for `CreateCall` (an outbound call) and
//! `UpdateIncomingPhoneNumber` (the admin's `set_webhook`), and
//! the stub's Account and IncomingPhoneNumber answers against their schemas.
//! (A Prism mock of the spec refuses every `MediaUrl` with "must be array",
//! a bug of its form decoding; hence this direct check.)
//!
//! The spec is read from `SMSGATE_TWILIO_SPEC`, else from `shared/twilio/`
//! beside the repository (where the project keeps it). A missing spec is a
//! test failure, never a skip.

use std::path::PathBuf;

use serde_json::Value;

/// Where the spec is.
pub fn spec_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SMSGATE_TWILIO_SPEC") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/twilio/twilio_api_v2010.json")
}

/// The spec, parsed (panics with the path when it cannot be read).
pub fn load_spec() -> Value {
    let path = spec_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Twilio's OpenAPI spec is needed at {} ({e})", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Checks `account_sid` (the path parameter) and the form fields of a
/// `CreateMessage` request: required fields present, every field known,
/// arrays only where the spec has them, each value of its type, format,
/// length, pattern or enum. Returns every problem found.
pub fn check_create_message(spec: &Value, account_sid: &str, form: &[(String, String)]) -> Result<(), Vec<String>> {
    let path = "/2010-04-01/Accounts/{AccountSid}/Messages.json";
    check_form(spec, (path, "CreateMessage"), &[("AccountSid", account_sid)], form)
}

/// The same for `CreateCall` (`POST …/Calls.json`: an outbound call), which
/// also needs one of `Url`, `Twiml` or `ApplicationSid` (the spec says so in
/// words, not in the schema).
pub fn check_create_call(spec: &Value, account_sid: &str, form: &[(String, String)]) -> Result<(), Vec<String>> {
    let path = "/2010-04-01/Accounts/{AccountSid}/Calls.json";
    let mut problems =
        check_form(spec, (path, "CreateCall"), &[("AccountSid", account_sid)], form).err().unwrap_or_default();
    if !form.iter().any(|(k, _)| matches!(k.as_str(), "Url" | "Twiml" | "ApplicationSid")) {
        problems.push("one of Url, Twiml and ApplicationSid is required".to_owned());
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// The same for `UpdateIncomingPhoneNumber` (`POST …/IncomingPhoneNumbers/{Sid}.json`:
/// what `set_webhook` posts).
pub fn check_update_incoming_phone_number(
    spec: &Value,
    (account_sid, sid): (&str, &str),
    form: &[(String, String)],
) -> Result<(), Vec<String>> {
    let path = "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json";
    check_form(spec, (path, "UpdateIncomingPhoneNumber"), &[("AccountSid", account_sid), ("Sid", sid)], form)
}

/// Every key of `answer` is a property of the spec's schema `schema`
/// (`api.v2010.account`, `api.v2010.account.incoming_phone_number`): a
/// stub's answer has no field Twilio's lacks.
pub fn check_answer_keys(spec: &Value, schema: &str, answer: &Value) -> Result<(), Vec<String>> {
    let properties = &spec["components"]["schemas"][schema]["properties"];
    assert!(properties.is_object(), "the spec has no schema {schema}");
    let problems: Vec<String> = answer
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| properties.get(k.as_str()).is_none())
        .map(|k| format!("{k} is not a field of {schema}"))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Checks a form-encoded operation: its path parameters and form fields.
fn check_form(
    spec: &Value,
    (path, operation_id): (&str, &str),
    parameters: &[(&str, &str)],
    form: &[(String, String)],
) -> Result<(), Vec<String>> {
    let op = &spec["paths"][path]["post"];
    assert_eq!(op["operationId"], operation_id, "the spec has no {operation_id} where expected");
    let schema = &op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
    let mut problems = Vec::new();
    for (name, value) in parameters {
        match op["parameters"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == *name)) {
            Some(p) => check_value(spec, name, &p["schema"], value, &mut problems),
            None => problems.push(format!("{name} is not a path parameter of {operation_id}")),
        }
    }
    for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !form.iter().any(|(k, _)| k == required) {
            problems.push(format!("{required} is required"));
        }
    }
    let properties = schema["properties"].as_object().cloned().unwrap_or_default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in form {
        let Some(property) = properties.get(key) else {
            problems.push(format!("{key} is not a {operation_id} parameter"));
            continue;
        };
        let property = resolve(spec, property);
        if property["type"] == "array" {
            if let Some(max) = property["maxItems"].as_u64()
                && form.iter().filter(|(k, _)| k == key).count() as u64 > max
            {
                problems.push(format!("{key} has more than {max} values"));
            }
            check_value(spec, key, &property["items"], value, &mut problems);
        } else {
            if seen.contains(&key.as_str()) {
                problems.push(format!("{key} is repeated but is not an array"));
            }
            check_value(spec, key, property, value, &mut problems);
        }
        seen.push(key);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(path) => path.split('/').fold(spec, |v, part| &v[part]),
        None => schema,
    }
}

fn check_value(spec: &Value, key: &str, schema: &Value, value: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    let mut bad = |what: String| problems.push(format!("{key}={value:?}: {what}"));
    if let Some(options) = schema["enum"].as_array()
        && !options.iter().any(|o| o == value)
    {
        bad(format!("not one of {options:?}"));
    }
    match schema["type"].as_str() {
        Some("boolean") if !matches!(value, "true" | "false") => bad("not a boolean".to_owned()),
        Some("integer") if value.parse::<i64>().is_err() => bad("not an integer".to_owned()),
        Some("number") if value.parse::<f64>().is_err() => bad("not a number".to_owned()),
        _ => {}
    }
    let len = value.chars().count() as u64;
    if schema["minLength"].as_u64().is_some_and(|m| len < m) || schema["maxLength"].as_u64().is_some_and(|m| len > m) {
        bad("length out of range".to_owned());
    }
    if let Some(pattern) = schema["pattern"].as_str()
        && !sid_pattern_matches(pattern, value)
    {
        bad(format!("does not match {pattern}"));
    }
    match schema["format"].as_str() {
        Some("uri") if url::Url::parse(value).map(|u| u.host().is_none()).unwrap_or(true) => {
            bad("not an absolute URL".to_owned())
        }
        // A call's To/From (`endpoint`) may also be a SIP or client address;
        // smsgate only ever calls numbers.
        Some("phone-number" | "endpoint") if smsgate_shared::domain::E164::parse(value).is_err() => {
            bad("not an E.164 number".to_owned())
        }
        _ => {}
    }
}

/// The spec's SID patterns, `^XX[0-9a-fA-F]{N}$`; any other pattern is a
/// panic (it needs code here, not a silent pass).
fn sid_pattern_matches(pattern: &str, value: &str) -> bool {
    let parsed = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .and_then(|p| p.split_once("[0-9a-fA-F]{"))
        .and_then(|(prefix, n)| Some((prefix, n.strip_suffix('}')?.parse::<usize>().ok()?)));
    let Some((prefix, n)) = parsed else { panic!("unsupported pattern in the spec: {pattern}") };
    value.strip_prefix(prefix).is_some_and(|hex| hex.len() == n && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_accepts_a_call_with_twiml_and_refuses_one_without_what_to_play() {
        let spec = load_spec();
        let ac = crate::ACCOUNT_SID;
        let call = form(&[
            ("To", "+14155550100"),
            ("From", "+15550001111"),
            ("Twiml", "<Response><Say>hi</Say></Response>"),
            ("StatusCallback", "https://sms.example.com/cb"),
            ("StatusCallbackMethod", "POST"),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "completed"),
        ]);
        assert_eq!(check_create_call(&spec, ac, &call), Ok(()));
        let problems = check_create_call(&spec, ac, &form(&[("To", "+14155550100"), ("StatusCallbackMethod", "PUT")]))
            .unwrap_err()
            .join("\n");
        for expected in ["From is required", "StatusCallbackMethod", "one of Url, Twiml and ApplicationSid"] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_spec_accepts_an_mms_and_refuses_what_twilio_would() {
        let spec = load_spec();
        let ac = crate::ACCOUNT_SID;
        let mms = form(&[
            ("To", "+14155550100"),
            ("From", "+15550001111"),
            ("Body", "hi"),
            ("MediaUrl", "https://cdn.example.com/a.png"),
            ("MediaUrl", "https://cdn.example.com/b.png"),
            ("StatusCallback", "https://sms.example.com/cb"),
        ]);
        assert_eq!(check_create_message(&spec, ac, &mms), Ok(()));
        let problems = check_create_message(
            &spec,
            "AC123",
            &form(&[
                ("From", "+15550001111"),
                ("MediaUrl", "/relative.png"),
                ("MessagingServiceSid", "MG1"),
                ("SendAsMms", "yes"),
                ("Body", "a"),
                ("Body", "b"),
                ("Colour", "red"),
            ]),
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "AccountSid",
            "To is required",
            "MediaUrl=\"/relative.png\"",
            "MessagingServiceSid",
            "SendAsMms",
            "Body is repeated",
            "Colour is not",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }
}
