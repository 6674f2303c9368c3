//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `deploy/test.sh` installs): the console's tests
//! click and type in the page the way an operator does.
//!
//! [`Browser::launch`] starts `chromedriver --port=0` (it prints the port it
//! took), opens one session with a fresh profile, and stops both on drop.
//! Only the few WebDriver commands the tests need are here, spoken as the
//! W3C protocol's JSON over HTTP.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in a process group of its own, with the Chromium
        // it started: end the whole group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn binary(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with what to
    /// install when they are missing: a browser test never passes by
    /// skipping.
    pub async fn launch() -> Self {
        let driver_bin = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium_bin = binary("CHROMIUM", "/usr/bin/chromium");
        let mut driver = Command::new(&driver_bin)
            .arg("--port=0")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {driver_bin} ({e}): install chromium and chromium-driver (deploy/test.sh does)")
            });
        let stdout = driver.stdout.take().expect("chromedriver's stdout is piped");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
            });
            // Keep draining so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            port
        })
        .await
        .expect("reading chromedriver's output")
        .expect("chromedriver did not say which port it took");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().expect("a temporary profile");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,900",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        // The profile lives as long as the process; the directory is left to
        // the temp cleaner rather than racing Chromium's own writes.
        std::mem::forget(profile);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_bin, "args": args},
        }}});
        let mut browser = Self { driver, base, session: String::new(), http };
        let answer = browser.call("POST", "/session", capabilities).await;
        browser.session =
            answer["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {answer}")).to_owned();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request.timeout(Duration::from_secs(60)).send().await.expect("chromedriver answers");
        let value: Value = response.json().await.expect("chromedriver answers JSON");
        if value["value"].get("error").is_some() {
            panic!("WebDriver {method} {path} failed: {}", value["value"]);
        }
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call("POST", &self.session_path("/execute/sync"), json!({ "script": script, "args": args })).await
    }

    /// Polls `condition` (a JavaScript expression) until it is truthy.
    pub async fn wait_until(&self, condition: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let script = format!("return Boolean({condition});");
        loop {
            if self.eval(&script, json!([])).await.as_bool() == Some(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("return document.body.innerText;", json!([])).await;
                panic!("timed out waiting for {what} ({condition}); the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.call("POST", &self.session_path("/element"), json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    /// Types `text` into the element `css` names.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call("POST", &self.session_path(&format!("/element/{id}/value")), json!({ "text": text })).await;
    }

    /// Clicks the element `css` names.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &self.session_path(&format!("/element/{id}/click")), json!({})).await;
    }

    /// The visible text of the element `css` names.
    pub async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call("GET", &self.session_path(&format!("/element/{id}/text")), Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Sets the window's size (a phone is about 390 x 844).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call("POST", &self.session_path("/window/rect"), json!({ "width": width, "height": height })).await;
    }

    /// Saves a PNG of the visible page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let data = self.call("GET", &self.session_path("/screenshot"), Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("WebDriver screenshots are base64 PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
