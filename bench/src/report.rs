//! The one JSON line each run prints.

use crate::cpu::Measured;
use serde_json::{Map, Value, json};
use std::process::ExitCode;

pub type Figures = Map<String, Value>;

const MIB: f64 = 1024.0 * 1024.0;

/// Wall time and client CPU of the measured phase, as report fields.
pub fn measured(m: Measured) -> Figures {
    let cpu = m.cpu_user + m.cpu_sys;
    let mut f = Figures::new();
    f.insert("seconds".into(), json!(round(m.seconds, 4)));
    f.insert("cpu_user_s".into(), json!(round(m.cpu_user, 3)));
    f.insert("cpu_sys_s".into(), json!(round(m.cpu_sys, 3)));
    f.insert("cpu_s".into(), json!(round(cpu, 3)));
    // Share of one core the client used while measuring.
    f.insert(
        "cpu_pct".into(),
        json!(round(100.0 * cpu / m.seconds.max(1e-9), 1)),
    );
    f
}

/// MiB/s for `bytes` moved in `m.seconds`.
pub fn throughput(f: &mut Figures, bytes: u64, m: Measured) {
    f.insert("bytes".into(), json!(bytes));
    f.insert(
        "mib_per_s".into(),
        json!(round(bytes as f64 / MIB / m.seconds.max(1e-9), 1)),
    );
}

pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Print the line: the figures with `ok: true`, or `ok: false` and the error.
pub fn emit(scenario: &str, url: &str, outcome: anyhow::Result<Figures>) -> ExitCode {
    let mut line = Figures::new();
    line.insert("scenario".into(), json!(scenario));
    line.insert("url".into(), json!(url));
    let code = match outcome {
        Ok(figures) => {
            line.insert("ok".into(), json!(true));
            line.extend(figures);
            ExitCode::SUCCESS
        }
        Err(e) => {
            line.insert("ok".into(), json!(false));
            line.insert("error".into(), json!(format!("{e:#}")));
            ExitCode::FAILURE
        }
    };
    println!("{}", Value::Object(line));
    code
}
