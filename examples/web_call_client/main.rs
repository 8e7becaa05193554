//! `web_call_client`: many headless web calls at once against a daemon,
//! for `bench/web-calls.sh`. Each call is `client::run` (str0m + libopus,
//! no browser). Prints one JSON line with the totals.
//!
//! Usage: web_call_client BASE_URL ORIGIN PUBLISHABLE_KEY AGENT_ID CALLS TALK_SECONDS [RAMP_MS]

// A bench tool: it prints its report and exits with its own code; the
// daemon's bans (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod client;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!(
            "usage: web_call_client BASE_URL ORIGIN PUBLISHABLE_KEY AGENT_ID CALLS TALK_SECONDS [RAMP_MS]"
        );
        std::process::exit(64);
    }
    let calls: usize = args[5].parse().unwrap_or(1).clamp(1, 2000);
    let talk = Duration::from_secs(args[6].parse().unwrap_or(10).clamp(1, 600));
    let ramp = Duration::from_millis(args.get(7).and_then(|r| r.parse().ok()).unwrap_or(20));
    let opts = client::Options {
        base: args[1].clone(),
        origin: args[2].clone(),
        trickle: false,
        trickle_delay: Duration::ZERO,
        // Every call talks until the same moment: the last one to connect
        // still talks `talk`, so all are up together for the measurement.
        talk: talk + ramp * u32::try_from(calls).unwrap_or(u32::MAX),
        connect_timeout: Duration::from_secs(30),
    };
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let (http, opts, key, agent) =
            (http.clone(), opts.clone(), args[3].clone(), args[4].clone());
        tasks.push(tokio::spawn(async move {
            let call = client::create(&http, &opts, &key, &agent).await?;
            client::run(&http, &opts, &call).await
        }));
        tokio::time::sleep(ramp).await;
    }
    let (mut connected, mut failed, mut opus_in, mut opus_out, mut lost) = (0, 0, 0, 0, 0);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(o)) if o.connected_after.is_some() => {
                connected += 1;
                opus_in += o.opus_in;
                opus_out += o.opus_out;
                lost += o.lost;
            }
            Ok(Ok(o)) => {
                failed += 1;
                errors.push(format!("{}: never connected", o.call_id));
            }
            Ok(Err(e)) => {
                failed += 1;
                errors.push(e);
            }
            Err(e) => {
                failed += 1;
                errors.push(e.to_string());
            }
        }
    }
    errors.truncate(5);
    println!(
        "{}",
        serde_json::json!({
            "calls": calls, "connected": connected, "failed": failed,
            "opus_in": opus_in, "opus_out": opus_out, "lost": lost, "errors": errors,
        })
    );
}
