//! `janus top`: a live terminal view of a cluster (nodes, req/s, errors, p99, faults in the last
//! minute), redrawn in place every second with ratatui, `q` quits; `--once` prints one frame as
//! plain text for scripts.
//!
//! The numbers come from the supervisor's `state.json` (every process, restarts, spare nodes) and
//! the router's `GET /status/data` (the status page's data: the router's per-node counters turned
//! into rates, p99 from each node's own latency histogram, faults).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ratatui::Terminal;
use ratatui::backend::{Backend, TestBackend};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use serde_json::Value;

use crate::cluster::run_dir;
use crate::supervisor::{ClusterState, Role};

/// One refresh of everything `top` shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The supervisor's view.
    pub state: ClusterState,
    /// The router's `/status/data`, or why it is missing.
    pub router: Result<Value, String>,
    /// When it was taken.
    pub at: std::time::SystemTime,
}

/// Reads the cluster once.
pub fn snapshot(cluster: &str) -> anyhow::Result<Snapshot> {
    let state = ClusterState::read(&run_dir(cluster))?;
    let router = match state.procs.iter().find(|p| p.spec.role == Role::Router) {
        None => Err("no router in this cluster".to_string()),
        Some(r) => match crate::up::admin_get(&r.spec, "/status/data") {
            Ok(reply) if reply.status == 200 => {
                serde_json::from_slice(&reply.body).map_err(|e| format!("bad status data: {e}"))
            }
            Ok(reply) => Err(format!(
                "router admin {} answered {} to /status/data",
                r.spec.admin, reply.status
            )),
            Err(e) => Err(format!("router admin {} unreachable: {e:#}", r.spec.admin)),
        },
    };
    Ok(Snapshot {
        state,
        router,
        at: std::time::SystemTime::now(),
    })
}

fn rate(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn seconds(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// The router's view of one node (its `/pools` entry and its rates), if the router has it.
fn router_node<'a>(router: &'a Value, id: &str) -> (Option<&'a Value>, Option<&'a Value>) {
    let pools = router["pools"]["pools"].as_array();
    let node = pools
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodes"].as_array())
        .flatten()
        .find(|n| n["id"] == id);
    let rates = router["rates"]["nodes"].get(id);
    (node, rates)
}

fn health_style(h: &str) -> Style {
    match h {
        "healthy" | "running" => Style::default().fg(Color::Green),
        "draining" | "backoff" | "starting" => Style::default().fg(Color::Yellow),
        "-" => Style::default(),
        _ => Style::default().fg(Color::Red),
    }
}

/// Draws one frame.
pub fn draw(f: &mut ratatui::Frame<'_>, s: &Snapshot, cluster: &str, interactive: bool) {
    let area = f.area();
    let router = s.router.as_ref().ok();
    let null = Value::Null;
    let data = router.unwrap_or(&null);
    let [head, nodes_area, faults_area, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(s.state.procs.len() as u16 + 3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);

    // Summary.
    let failures: f64 = data["rates"]["nodes"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|r| r["failures_per_s"].as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    let split = match data["rates"]["split"].as_object() {
        Some(m) => format!(
            "stable {:.0}% / debug {:.0}%",
            m.get("stable").and_then(Value::as_f64).unwrap_or(0.0) * 100.0,
            m.get("debug").and_then(Value::as_f64).unwrap_or(0.0) * 100.0
        ),
        None => "-".into(),
    };
    let mut summary = vec![
        Span::styled(
            format!("cluster {cluster} ({})", s.state.service),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "   req/s {}   errors/s {}   faults last minute {}   effective split {split}",
            rate(&data["rates"]["total_req_per_s"]),
            if router.is_some() {
                format!("{failures:.1}")
            } else {
                "-".into()
            },
            data["faults_last_minute"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
        )),
    ];
    if let Err(e) = &s.router {
        summary.push(Span::styled(
            format!("   router: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    f.render_widget(
        Paragraph::new(Line::from(summary)).block(Block::default().borders(Borders::ALL)),
        head,
    );

    // Nodes.
    let header = Row::new([
        "NODE",
        "ROLE",
        "FLAVOR",
        "PROCESS",
        "HEALTH",
        "REQ/S",
        "ERR/S",
        "P99",
        "IN-FLIGHT",
        "SEQ",
        "RESTARTS",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.state.procs.iter().map(|p| {
        let (node, rates) = router_node(data, &p.spec.id);
        let health = node
            .and_then(|n| n["state"].as_str())
            .unwrap_or("-")
            .to_string();
        let r = rates.unwrap_or(&null);
        let role = format!("{:?}", p.spec.role).to_lowercase();
        Row::new(vec![
            Cell::from(p.spec.id.clone()),
            Cell::from(role),
            Cell::from(p.spec.kind.clone()),
            Cell::from(p.state.clone()).style(health_style(&p.state)),
            Cell::from(health.clone()).style(health_style(&health)),
            Cell::from(rate(&r["req_per_s"])),
            Cell::from(rate(&r["failures_per_s"])),
            Cell::from(seconds(&r["p99_s"])),
            Cell::from(
                node.and_then(|n| n["in_flight"].as_u64())
                    .map_or("-".into(), |v| v.to_string()),
            ),
            Cell::from(
                node.and_then(|n| n["last_seq"].as_u64())
                    .map_or("-".into(), |v| v.to_string()),
            ),
            Cell::from(p.restarts.to_string()),
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(8),
    ];
    f.render_widget(
        Table::new(rows, widths).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" nodes (rates over the router's last 10 s) "),
        ),
        nodes_area,
    );

    // Recent faults.
    let faults: Vec<Line> = data["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .take(faults_area.height.saturating_sub(2) as usize)
        .map(|f| {
            Line::from(format!(
                "#{:<4} {:<10} {} {}  stable {} {}  debug {} {}",
                f["id"].as_i64().unwrap_or_default(),
                f["kind"].as_str().unwrap_or(""),
                f["method"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or(""),
                f["stable_node"].as_str().unwrap_or("-"),
                f["stable_outcome"].as_str().unwrap_or("-"),
                f["debug_node"].as_str().unwrap_or("-"),
                f["debug_outcome"].as_str().unwrap_or("-"),
            ))
        })
        .collect();
    let faults = if faults.is_empty() {
        vec![Line::from("no faults recorded")]
    } else {
        faults
    };
    f.render_widget(
        Paragraph::new(faults).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" recent faults (`janus faults show ID`) "),
        ),
        faults_area,
    );
    let when = humantime_utc(s.at);
    let hint = if interactive {
        format!("{when}  q quits; refreshed every second")
    } else {
        when
    };
    f.render_widget(
        Paragraph::new(hint).style(Style::default().fg(Color::DarkGray)),
        foot,
    );
}

/// `HH:MM:SS UTC` of a time.
fn humantime_utc(t: std::time::SystemTime) -> String {
    let s = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s % 3600) / 60, s % 60)
}

/// One frame as plain text (no escape codes), `width` columns wide.
pub fn render_text(s: &Snapshot, cluster: &str, width: u16) -> anyhow::Result<String> {
    let height = s.state.procs.len() as u16 + 3 + 3 + 8 + 1;
    let mut term = Terminal::new(TestBackend::new(width, height))?;
    term.draw(|f| draw(f, s, cluster, false))?;
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// `janus top --once`: two looks a second apart (the router's rates need two samples), one frame.
pub fn once(cluster: &str) -> anyhow::Result<String> {
    let first = snapshot(cluster)?;
    std::thread::sleep(Duration::from_millis(1100));
    let s = snapshot(cluster).unwrap_or(first);
    let width = crossterm::terminal::size().map_or(120, |(w, _)| w.max(100));
    render_text(&s, cluster, width)
}

/// `janus top`: redraws every second until `q`, Esc or Ctrl-C.
pub fn interactive(cluster: &str) -> anyhow::Result<()> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        bail!("janus top needs a terminal; use `janus top --once` in scripts");
    }
    // Fails early, before the screen is taken, when there is no cluster.
    snapshot(cluster)?;
    crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
    let mut stdout = std::io::stdout();
    crossterm::execute!(stdout, crossterm::terminal::EnterAlternateScreen)?;
    let mut term = Terminal::new(ratatui::backend::CrosstermBackend::new(stdout))?;
    let result = (|| -> anyhow::Result<()> {
        term.clear()?;
        loop {
            let s = snapshot(cluster)?;
            term.draw(|f| draw(f, &s, cluster, true))?;
            let next = Instant::now() + Duration::from_secs(1);
            while let Some(left) = next.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        term.backend_mut(),
        crossterm::terminal::LeaveAlternateScreen
    );
    let _ = term.show_cursor();
    let _ = term.backend_mut().flush();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{ProcSpec, ProcState};

    fn proc(id: &str, role: Role, kind: &str) -> ProcState {
        ProcState {
            spec: ProcSpec {
                id: id.into(),
                role,
                kind: kind.into(),
                program: "x".into(),
                args: vec![],
                env: vec![],
                listen: "127.0.0.1:1".parse().expect("addr"),
                admin: "127.0.0.1:2".parse().expect("addr"),
                token: "t".into(),
                listen_on_stdin: false,
                domain: None,
            },
            state: "running".into(),
            pid: Some(1),
            started_ms: None,
            restarts: 2,
            exits: vec![],
        }
    }

    #[test]
    fn one_frame_as_text() {
        let state = ClusterState {
            cluster: "c".into(),
            service: "faulty".into(),
            supervisor_pid: 1,
            stopping: false,
            procs: vec![
                proc("stable-0", Role::Stable, "uk"),
                proc("spare-0", Role::Spare, "unix"),
                proc("router", Role::Router, "router"),
            ],
        };
        let router = serde_json::json!({
            "pools": {"pools": [{"pool": "stable", "nodes": [
                {"id": "stable-0", "state": "ejected", "in_flight": 3, "last_seq": 41}]}]},
            "rates": {"total_req_per_s": 1234.4, "split": {"stable": 0.9, "debug": 0.1},
                      "nodes": {"stable-0": {"req_per_s": 1234.4, "failures_per_s": 0.5, "p99_s": 0.0042}}},
            "faults_last_minute": 7,
            "faults": [{"id": 9, "kind": "fault", "method": "GET", "path": "/div?a=1&b=0",
                        "stable_node": "stable-0", "stable_outcome": "reset",
                        "debug_node": "debug-0", "debug_outcome": "panic"}],
        });
        let s = Snapshot {
            state,
            router: Ok(router),
            at: std::time::UNIX_EPOCH,
        };
        let out = render_text(&s, "c", 120).expect("frame");
        assert!(!out.contains('\u{1b}'));
        let line = out.lines().find(|l| l.contains("stable-0 ")).expect(&out);
        for want in ["uk", "ejected", "1234", "0.5", "4.2ms", "3", "41", "2"] {
            assert!(line.contains(want), "{want} not in {line:?}\n{out}");
        }
        assert!(out.contains("faults last minute 7"), "{out}");
        assert!(out.contains("stable 90% / debug 10%"), "{out}");
        assert!(out.contains("#9"), "{out}");
        assert!(out.contains("spare-0"), "{out}");
    }
}
