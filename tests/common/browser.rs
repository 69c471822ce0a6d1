//! A real browser for tests: headless Chromium driven over WebDriver (chromedriver, through
//! fantoccini), loading the page a node serves and using it as a person would: typing into its
//! forms and reading what it shows.
//!
//! `scripts/test` installs Debian's `chromium` and `chromium-driver` when they are missing;
//! `TIM_CHROMEDRIVER` and `TIM_CHROMIUM` point elsewhere. A machine without them fails these
//! tests, saying so, rather than skipping them.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use super::process::free_port;

/// How long a page gets to show what a test waits for (a browser on two busy cores).
pub const PAGE_WAIT: Duration = Duration::from_secs(30);

/// One chromedriver process; each [`Page`] is a browser of its own (own storage).
pub struct Browser {
    driver: Child,
    url: String,
}

impl Browser {
    pub async fn start() -> Browser {
        let path = std::env::var("TIM_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let driver = Command::new(&path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{path}: {e}; scripts/test installs chromium and chromium-driver")
            });
        let browser = Browser { driver, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + PAGE_WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        browser
    }

    /// A new headless Chromium showing `url`.
    pub async fn open(&self, url: &str) -> Page {
        self.open_with(url, &[]).await
    }

    /// [`Browser::open`] with more Chromium flags.
    pub async fn open_with(&self, url: &str, flags: &[&str]) -> Page {
        let binary = std::env::var("TIM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
        ];
        args.extend_from_slice(flags);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": binary, "args": args }));
        let mut last = None;
        for _ in 0..3 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => {
                    client.goto(url).await.unwrap();
                    return Page { client };
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        panic!("no browser session: {last:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One message as the page shows it: "from: body", and its mark (…, ✓, ✓✓).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub text: String,
    pub mark: String,
}

/// The page of one user in one browser.
pub struct Page {
    pub client: Client,
}

impl Page {
    /// Logs in (dev login: the node has no JWT keys) and waits until the stream is up.
    pub async fn login(&self, user: &str, device: &str) {
        self.type_into("user", user).await;
        self.type_into("device", device).await;
        self.client.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
        self.wait_online().await;
    }

    pub async fn type_into(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Types a message to `to` and presses Send.
    pub async fn send(&self, to: &str, text: &str) {
        self.type_into("to", to).await;
        self.type_into("text", text).await;
        self.client.find(Locator::Id("send")).await.unwrap().click().await.unwrap();
    }

    /// The status line's state: online, connecting, offline.
    pub async fn state(&self) -> String {
        let v = self.js("return document.getElementById('status').dataset.state").await;
        v.as_str().unwrap_or_default().to_string()
    }

    pub async fn wait_online(&self) {
        self.wait_for("online", |p| async move { p.state().await == "online" }).await;
    }

    /// The messages the page shows, in order.
    pub async fn messages(&self) -> Vec<Shown> {
        let v = self
            .js("return [...document.querySelectorAll('#messages li.msg')].map(li => \
                 [li.firstChild.textContent, li.querySelector('.mark')?.textContent || ''])")
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|pair| Shown {
                text: pair[0].as_str().unwrap().to_string(),
                mark: pair[1].as_str().unwrap().to_string(),
            })
            .collect()
    }

    /// The texts of the messages the page shows.
    pub async fn texts(&self) -> Vec<String> {
        self.messages().await.into_iter().map(|m| m.text).collect()
    }

    /// Waits until the page shows a message with `text` (and, when given, `mark`).
    pub async fn wait_message(&self, text: &str, mark: Option<&str>) {
        let what = format!("{text:?} marked {mark:?}");
        self.wait_for(&what, |p| async move {
            p.messages().await.iter().any(|m| m.text == text && mark.is_none_or(|k| m.mark == k))
        })
        .await;
    }

    /// Clicks the conversation `id` in the sidebar.
    pub async fn open_conversation(&self, id: &str) {
        let selector = format!("#conversations li[data-id='{id}']");
        self.wait_for(&selector, |p| {
            let selector = selector.clone();
            async move { p.client.find(Locator::Css(&selector)).await.is_ok() }
        })
        .await;
        self.client.find(Locator::Css(&selector)).await.unwrap().click().await.unwrap();
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls `ready` until it holds, for up to [`PAGE_WAIT`]; `what` names it on failure.
    pub async fn wait_for<'a, F, Fut>(&'a self, what: &str, mut ready: F)
    where
        F: FnMut(&'a Page) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PAGE_WAIT;
        while !ready(self).await {
            if Instant::now() > deadline {
                let status = self.js("return document.getElementById('status').textContent").await;
                let journal = self.js("return window.timJournal").await;
                panic!(
                    "page never showed {what}: status {status}, messages {:?}, journal {journal}",
                    self.texts().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
