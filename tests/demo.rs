//! `make demo` (examples/demo.sh) run twice in a row on the built binaries: both runs log in and
//! serve the API, and SIGTERM to the script stops the script, `serve` and the test server (no
//! orphan keeps a port).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

async fn run_once(data: &Path, run: u32) {
    let (port, api_port) = (free_port(), free_port());
    let mut script = tokio::process::Command::new("bash")
        .arg(root().join("examples/demo.sh"))
        .env("DEMO_NO_BUILD", "1")
        .env("DEMO_PORT", port.to_string())
        .env("DEMO_API_PORT", api_port.to_string())
        .env("DEMO_DATA_DIR", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("bash runs the demo");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // The demo prints the page's URL with the API key serve created; requests carry it.
    let mut stdout = tokio::io::BufReader::new(script.stdout.take().unwrap()).lines();
    let page_prefix = format!("http://127.0.0.1:{api_port}/?apikey=");
    let page_url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(at) = line.find(&page_prefix) {
                return line[at..].trim().to_string();
            }
        }
        panic!("run {run}: the demo ended without printing the page's URL");
    })
    .await
    .unwrap_or_else(|_| panic!("run {run}: the demo printed no page URL within 60 s"));
    let key = std::fs::read_to_string(data.join("api-key")).unwrap();
    assert_eq!(
        page_url,
        format!("{page_prefix}{}", key.trim()),
        "run {run}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let url = format!("http://127.0.0.1:{api_port}/api/v1/servers/demo");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no answer yet");
    loop {
        if let Ok(response) = http.get(&url).header("X-API-Key", key.trim()).send().await
            && let Ok(view) = response.json::<serde_json::Value>().await
        {
            if view["authenticated"] == true {
                break;
            }
            last = view.to_string();
        }
        if let Ok(Some(status)) = script.try_wait() {
            panic!("run {run}: the demo exited early ({status}); last view: {last}");
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: the demo never logged in within 60 s; last view: {last}; see {}",
            data.join("oauth-test-server.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = script.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), script.wait())
        .await
        .unwrap_or_else(|_| panic!("run {run}: the demo did not stop within 20 s of SIGTERM"))
        .unwrap();
    assert_eq!(status.code(), Some(143), "run {run}: exits as terminated");
    // Its children stopped too: nothing listens on their ports any more.
    assert!(!port_open(api_port), "run {run}: serve outlived the demo");
    assert!(
        !port_open(port),
        "run {run}: the test server outlived the demo"
    );
}

#[tokio::test]
async fn the_demo_works_twice_in_a_row_and_stops_on_sigterm() {
    for bin in ["mcpproxy-oauth", "oauth-test-server"] {
        assert!(
            root().join("target/debug").join(bin).exists(),
            "target/debug/{bin} is missing: run `make build` first (the demo runs the built binaries)"
        );
    }
    let data = std::env::temp_dir().join(format!("mcpproxy-oauth-demo-{}", std::process::id()));
    for run in 1..=2 {
        run_once(&data, run).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}
