//! Debian's Chromium, headless, driven through its chromedriver with `fantoccini` (a
//! tokio-based WebDriver client: the tests are tokio already, and WebDriver drives the same
//! browser a person uses, with no browser download of its own — playwright would need
//! Node and its own browser build, which this network cannot fetch).
//!
//! [`Browser::start`] runs chromedriver on a free loopback port and opens a headless session
//! at a window size; [`Browser::console_errors`] reads the browser's console (chromedriver's
//! log endpoint), and [`Browser::before_each_page`] installs a script that runs before any
//! page script (Chrome DevTools' `Page.addScriptToEvaluateOnNewDocument`). Missing packages
//! fail the test: scripts/test.sh installs `chromium` and `chromium-driver`.

use super::chain::free_port;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver and one headless Chromium session; both end when it is dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

/// A chromedriver-specific command: POST to `path` under the session with `body`.
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose window is `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's `{package}` (scripts/test.sh installs chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        let client = builder
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a headless Chromium session");
        let browser = Browser { client, driver };
        browser.resize(width, height).await;
        browser
    }

    /// Sets the viewport (the page's inner window) to `width`×`height` CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// Runs a Chrome DevTools Protocol command in the session.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(SessionPost {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// Runs `source` in every page this session loads from now on, before the page's own.
    pub async fn before_each_page(&self, source: &str) {
        self.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )
        .await;
    }

    /// Loads `url` and waits for it.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page, returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The console messages logged since the last call (chromedriver's browser log).
    pub async fn console(&self) -> Vec<Value> {
        let log = self
            .client
            .issue_cmd(SessionPost {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .expect("the browser's console log");
        log.as_array().cloned().unwrap_or_default()
    }

    /// The console's errors (level SEVERE) since the last read.
    pub async fn console_errors(&self) -> Vec<String> {
        (self.console().await.into_iter())
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The page's screenshot (the viewport), PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
