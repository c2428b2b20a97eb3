//! `tracer top`: a live terminal view, one row per upstream target, refreshed every second.
//!
//! ```text
//! tracer top  10:01:05 UTC  traced 12 s  events 1234  lost 0  hooks 9/11  sort: attempts  (s: sort, q: quit)
//!
//! TARGET            NETNS       UPSTREAM  ATTEMPTS  FAILURES BY CAUSE             LISTENER       QUEUE    LAST ERROR
//! 127.0.0.1:8000    4026531840  app       12        dead_listener 9, backlog 3     gunicorn 700   129/128  dead_listener 10:01:04 (1 s ago)
//! ```
//!
//! The row model (`rows`, `cells`) is a pure function of the engine's findings; drawing and
//! the terminal are at the edge (`TopView`). The terminal is restored on every way out: the
//! view's guard on normal exit, q, Ctrl-C, SIGINT/SIGTERM (the trace loop ends, the view is
//! dropped) and errors (dropped while unwinding the `?`); a panic hook restores it before the
//! panic message is printed. Warnings written to stderr meanwhile are held and printed after.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use crate::kernel::hooks::CaptureHealth;
use crate::enrich::monotonic_ns;
use crate::event::{Queue, Target};
use crate::explain::{Cause, Finding, ProcessRef};
use crate::report::text::escape;
use crate::report::Clock;

/// How often the view is redrawn (keys are read on every trace-loop tick).
pub const REFRESH: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// The row model (pure)
// ---------------------------------------------------------------------------------------

/// Which column the rows are sorted by; `s` cycles through them in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Most attempts first.
    Attempts,
    /// Most recent failure first.
    LastError,
    /// Fullest accept queue first (len / max), targets without a measured queue last.
    Queue,
    /// Target, alphabetically.
    Target,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Attempts => SortBy::LastError,
            SortBy::LastError => SortBy::Queue,
            SortBy::Queue => SortBy::Target,
            SortBy::Target => SortBy::Attempts,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Attempts => "attempts",
            SortBy::LastError => "last error",
            SortBy::Queue => "queue",
            SortBy::Target => "target",
        }
    }

    /// The column (index into `HEADER`) the sort is on.
    fn column(self) -> usize {
        match self {
            SortBy::Target => 0,
            SortBy::Attempts => 3,
            SortBy::Queue => 6,
            SortBy::LastError => 7,
        }
    }
}

/// One upstream target (in one network namespace): everything its findings say.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub target: Target,
    pub netns: u32,
    /// The Nginx upstream name, "" while unknown.
    pub upstream: String,
    /// Distinct attempts affected, all causes.
    pub attempts: u64,
    /// Of `attempts`: those still waiting.
    pub pending: u64,
    /// Attempts per cause, most first.
    pub by_cause: Vec<(Cause, u64)>,
    /// Who listens (or last listened) on the target, from the most recent finding naming one;
    /// for after-connect findings without a listener, the process that held the connection.
    pub listener: Option<ProcessRef>,
    /// The accept queue, from the most recent finding that measured one.
    pub queue: Option<Queue>,
    /// The cause of the most recent failure and when it was seen (monotonic ns).
    pub last_cause: Cause,
    pub last_seen_ns: u64,
}

/// A finding and the Nginx upstream its target is configured in (None when unknown).
pub type Named = (Finding, Option<String>);

/// Rows from findings: one per (target, netns), sorted by `sort` (ties: target, netns).
pub fn rows(findings: &[Named], sort: SortBy) -> Vec<Row> {
    let mut by_target: BTreeMap<(Target, u32), Vec<&Named>> = BTreeMap::new();
    for n in findings {
        by_target.entry((n.0.target.clone(), n.0.netns)).or_default().push(n);
    }
    let mut out: Vec<Row> = by_target
        .into_iter()
        .map(|((target, netns), mut named)| {
            // Most recent first: that finding speaks for the listener, queue and last error.
            named.sort_by(|(a, _), (b, _)| b.last_seen_ns.cmp(&a.last_seen_ns).then_with(|| a.cause.cmp(&b.cause)));
            let upstream = named.iter().find_map(|(_, u)| u.clone().filter(|u| !u.is_empty())).unwrap_or_default();
            let fs: Vec<&Finding> = named.iter().map(|(f, _)| f).collect();
            let mut by_cause: Vec<(Cause, u64)> = fs.iter().map(|f| (f.cause, f.count)).collect();
            by_cause.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            Row {
                upstream,
                attempts: fs.iter().map(|f| f.count).sum(),
                pending: fs.iter().map(|f| f.pending).sum(),
                by_cause,
                listener: fs.iter().find_map(|f| f.listener.clone()).or_else(|| fs.iter().find_map(|f| f.upstream_process.clone())),
                queue: fs.iter().find_map(|f| f.queue),
                last_cause: fs[0].cause,
                last_seen_ns: fs[0].last_seen_ns,
                target,
                netns,
            }
        })
        .collect();
    let fullness = |r: &Row| r.queue.map(|q| (q.len as f64 / q.max.max(1) as f64, q.len));
    out.sort_by(|a, b| {
        let primary = match sort {
            SortBy::Attempts => b.attempts.cmp(&a.attempts),
            SortBy::LastError => b.last_seen_ns.cmp(&a.last_seen_ns),
            SortBy::Queue => fullness(b).partial_cmp(&fullness(a)).unwrap_or(std::cmp::Ordering::Equal),
            SortBy::Target => std::cmp::Ordering::Equal,
        };
        primary.then_with(|| a.target.cmp(&b.target)).then_with(|| a.netns.cmp(&b.netns))
    });
    out
}

pub const HEADER: [&str; 8] = ["TARGET", "NETNS", "UPSTREAM", "ATTEMPTS", "FAILURES BY CAUSE", "LISTENER", "QUEUE", "LAST ERROR"];

/// A row's cells as text (`now_ns`: monotonic now, for "3 s ago").
pub fn cells(r: &Row, clock: &Clock, now_ns: u64) -> [String; 8] {
    let attempts = if r.pending > 0 { format!("{} ({} pending)", r.attempts, r.pending) } else { r.attempts.to_string() };
    let causes = r.by_cause.iter().map(|(c, n)| format!("{} {n}", c.as_str())).collect::<Vec<_>>().join(", ");
    let listener = r.listener.as_ref().map(|l| format!("{} {}", escape(&l.comm), l.pid)).unwrap_or_else(|| "-".into());
    let queue = r.queue.map(|q| format!("{}/{}", q.len, q.max)).unwrap_or_else(|| "-".into());
    let ago = now_ns.saturating_sub(r.last_seen_ns) / 1_000_000_000;
    let last = format!("{} {} ({ago} s ago)", r.last_cause.as_str(), clock.to_hms(r.last_seen_ns));
    let upstream = if r.upstream.is_empty() { "-".to_string() } else { escape(&r.upstream).into_owned() };
    [escape(&r.target.to_string()).into_owned(), r.netns.to_string(), upstream, attempts, causes, listener, queue, last]
}

/// Columns whose cells are numbers (NETNS, ATTEMPTS, QUEUE): never cut, since a cut number
/// reads as another number (1234 as `123`).
const NUMBER_COLUMNS: [usize; 3] = [1, 3, 6];
/// Space between columns.
const COLUMN_SPACING: usize = 2;
/// A text column is never narrower than this: one character and the cut mark.
const MIN_TEXT_WIDTH: usize = 2;
/// A text column is never wider than this (a long path is cut, visibly).
const MAX_TEXT_WIDTH: usize = 64;

/// Column widths for a terminal `width` columns wide: each column as wide as its widest cell
/// (text columns at most `MAX_TEXT_WIDTH`). When they do not all fit, the widest text column
/// gives way first, down to `MIN_TEXT_WIDTH`; number columns never shrink. When even that does
/// not fit, columns are hidden from the right (`None`), TARGET last.
pub fn fit_columns(texts: &[[String; 8]], width: usize) -> Vec<Option<usize>> {
    let mut widths: Vec<Option<usize>> = (0..HEADER.len())
        .map(|i| {
            let widest = texts.iter().map(|t| t[i].chars().count()).chain([HEADER[i].chars().count()]).max().unwrap_or(0);
            Some(if NUMBER_COLUMNS.contains(&i) { widest } else { widest.min(MAX_TEXT_WIDTH) })
        })
        .collect();
    let total = |ws: &[Option<usize>]| {
        let shown: Vec<usize> = ws.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + COLUMN_SPACING * shown.len().saturating_sub(1)
    };
    while total(&widths) > width {
        let excess = total(&widths) - width;
        let widest_text = (0..widths.len())
            .filter(|i| !NUMBER_COLUMNS.contains(i))
            .filter_map(|i| widths[i].filter(|w| *w > MIN_TEXT_WIDTH).map(|w| (w, i)))
            .max();
        match widest_text {
            Some((w, i)) => {
                // Down to the next widest text column's width at most, so they shrink together.
                let next = (0..widths.len())
                    .filter(|j| *j != i && !NUMBER_COLUMNS.contains(j))
                    .filter_map(|j| widths[j])
                    .filter(|n| *n < w)
                    .max()
                    .unwrap_or(MIN_TEXT_WIDTH)
                    .max(MIN_TEXT_WIDTH);
                widths[i] = Some(w - excess.min(w - next).max(1));
            }
            None => match (1..widths.len()).rev().find(|i| widths[*i].is_some()) {
                Some(i) => widths[i] = None,
                None => break,
            },
        }
    }
    widths
}

/// Greedy word wrap to `width` columns (at least one line); a word longer than a line is cut
/// with the cut mark.
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    if text.chars().count() <= width {
        return vec![text.to_string()];
    }
    let mut lines = vec![String::new()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let last = lines.last_mut().expect("never empty");
        let len = last.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(cut(word, width));
        } else {
            if len > 0 {
                last.push(' ');
            }
            last.push_str(&cut(word, width - len.min(width - 1) - usize::from(len > 0)));
        }
    }
    lines
}

/// A cell cut to `width` characters; a cut cell ends in `…` so it shows it was cut.
pub fn cut(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_string();
    }
    let mut s: String = cell.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The first line: time, how long and how well tracer has been tracing, the sort, the keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub traced_s: u64,
    pub events: u64,
    pub lost: u64,
    pub hooks_active: usize,
    pub hooks_total: usize,
}

pub fn status_line(s: &Status, sort: SortBy, clock: &Clock, now_ns: u64) -> String {
    format!(
        "tracer top  {} UTC  traced {} s  events {}  lost {}  hooks {}/{}  sort: {}  (s: sort, q: quit)",
        clock.to_hms(now_ns),
        s.traced_s,
        s.events,
        s.lost,
        s.hooks_active,
        s.hooks_total,
        sort.label()
    )
}

/// Draws the whole view into a frame (any backend: the tests use ratatui's TestBackend).
/// Nothing is cut silently: the status line wraps, number cells are whole, a cut text cell
/// ends in `…`, and hidden columns are counted on the status line.
pub fn draw(frame: &mut Frame<'_>, rows: &[Row], status: &Status, sort: SortBy, clock: &Clock, now_ns: u64) {
    let area = frame.area();
    let texts: Vec<[String; 8]> = rows.iter().map(|r| cells(r, clock, now_ns)).collect();
    let widths = fit_columns(&texts, area.width as usize);
    let hidden = widths.iter().filter(|w| w.is_none()).count();
    let mut line = status_line(status, sort, clock, now_ns);
    if hidden > 0 && !rows.is_empty() {
        line.push_str(&format!("  ({hidden} columns hidden: widen the terminal)"));
    }
    let status_lines = wrap_words(&line, area.width as usize);
    let [top, gap, body] =
        Layout::vertical([Constraint::Length(status_lines.len() as u16), Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let _ = gap;
    frame.render_widget(Paragraph::new(status_lines.into_iter().map(Line::from).collect::<Vec<_>>()), top);
    if rows.is_empty() {
        frame.render_widget(Paragraph::new(Line::from("No failed upstream connections seen yet.")), body);
        return;
    }
    let shown: Vec<(usize, usize)> = widths.iter().enumerate().filter_map(|(i, w)| w.map(|w| (i, w))).collect();
    let header = TableRow::new(shown.iter().map(|&(i, w)| {
        let style = if i == sort.column() { Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED) } else { Style::new().add_modifier(Modifier::BOLD) };
        Cell::from(cut(HEADER[i], w)).style(style)
    }));
    let body_rows: Vec<TableRow<'_>> =
        texts.iter().map(|t| TableRow::new(shown.iter().map(|&(i, w)| Cell::from(cut(&t[i], w))))).collect();
    let constraints: Vec<Constraint> = shown.iter().map(|&(_, w)| Constraint::Length(w as u16)).collect();
    frame.render_widget(Table::new(body_rows, constraints).header(header).column_spacing(COLUMN_SPACING as u16), body);
}

// ---------------------------------------------------------------------------------------
// The terminal (the edge)
// ---------------------------------------------------------------------------------------

/// Whether the terminal is in raw mode / the alternate screen because of us.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// While the view is up, what tracer writes to stderr (warnings) goes to a memory file
/// instead of over the view, and is replayed to the real stderr when the terminal is
/// restored. The saved stderr and the memory file, -1 when not held.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
static HELD_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Leaves raw mode and the alternate screen, shows the cursor, then gives stderr back with
/// what was written meanwhile; does nothing the second time (the guard and the panic hook
/// may both run).
pub fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        // ratatui leaves raw mode and the alternate screen; the cursor `start` hid is ours.
        let _ = ratatui::try_restore();
        let _ = execute!(std::io::stdout(), cursor::Show);
    }
    release_stderr();
}

/// Sends stderr to a memory file, when stderr is a terminal (the one the view is drawn on).
fn hold_stderr() {
    if !std::io::stderr().is_terminal() {
        return;
    }
    // SAFETY: plain fd calls; every fd opened here is closed on failure or kept in the statics.
    unsafe {
        let mem = libc::memfd_create(c"tracer-top-stderr".as_ptr(), libc::MFD_CLOEXEC);
        if mem < 0 {
            return;
        }
        let saved = libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3);
        if saved < 0 || libc::dup2(mem, libc::STDERR_FILENO) < 0 {
            libc::close(mem);
            if saved >= 0 {
                libc::close(saved);
            }
            return;
        }
        SAVED_STDERR.store(saved, Ordering::SeqCst);
        HELD_STDERR.store(mem, Ordering::SeqCst);
    }
}

/// Puts the real stderr back and copies to it what was written while it was held.
fn release_stderr() {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::FromRawFd;
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    let mem = HELD_STDERR.swap(-1, Ordering::SeqCst);
    if saved < 0 || mem < 0 {
        return;
    }
    // SAFETY: both fds were opened by hold_stderr and are owned here from now on.
    unsafe {
        libc::dup2(saved, libc::STDERR_FILENO);
        libc::close(saved);
        let mut held = std::fs::File::from_raw_fd(mem);
        if held.seek(SeekFrom::Start(0)).is_ok() {
            let _ = std::io::copy(&mut held, &mut std::io::stderr());
        }
    }
}

/// Refuses early, before anything is attached, what `top` cannot do.
pub fn preflight(json: bool) -> Result<()> {
    if json {
        bail!("`tracer top` is a terminal view; use `tracer watch --json` for JSON lines");
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`tracer top` needs a terminal; use `tracer watch` when output goes to a file or pipe");
    }
    Ok(())
}

/// Restores the terminal when dropped.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

pub struct TopView {
    terminal: ratatui::DefaultTerminal,
    sort: SortBy,
    clock: Clock,
    started: Instant,
    last_draw: Option<Instant>,
    draws: u64,
    // Last: dropped after the terminal.
    _guard: Guard,
}

impl TopView {
    /// Raw mode, alternate screen, hidden cursor; a panic hook that restores them first.
    pub fn start(clock: Clock) -> Result<TopView> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = Guard;
        // Raw mode and the alternate screen (ratatui's own panic hook restores them too).
        let mut terminal = ratatui::try_init().context("setting up the terminal")?;
        terminal.hide_cursor().context("setting up the terminal")?;
        hold_stderr();
        terminal.clear().context("clearing the terminal")?;
        Ok(TopView { terminal, sort: SortBy::Attempts, clock, started: Instant::now(), last_draw: None, draws: 0, _guard: guard })
    }

    /// Called on every trace-loop tick: reads the keys pressed since, and redraws once a
    /// second or at once after a key. Returns true when the user asked to quit. `health` (as
    /// capture publishes it) is only read for a redraw.
    pub fn tick(&mut self, health: impl Into<CaptureHealth>, findings: impl FnOnce() -> Vec<Named>) -> Result<bool> {
        let mut redraw = self.last_draw.is_none_or(|t| t.elapsed() >= REFRESH);
        while event::poll(Duration::ZERO).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                TermEvent::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                    KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => return Ok(true),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(true),
                    KeyCode::Char('s') | KeyCode::Char('S') => {
                        self.sort = self.sort.next();
                        redraw = true;
                    }
                    _ => {}
                },
                TermEvent::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if redraw {
            let health = health.into();
            let status = Status {
                traced_s: self.started.elapsed().as_secs(),
                events: health.emitted.values().sum(),
                lost: health.lost.values().sum(),
                hooks_active: health.hooks_active(),
                hooks_total: health.hooks.len(),
            };
            let rows = rows(&findings(), self.sort);
            self.draw(&rows, &status)?;
            self.draws += 1;
            // The privileged suite checks that a warning written while the view is up comes
            // after it, and that a panic restores the terminal (tests/operators.rs).
            if std::env::var_os("TRACER_TEST_TOP_PANIC").is_some() {
                if self.draws == 2 {
                    note!("tracer: warning: TRACER_TEST_TOP_PANIC: a warning written while the view is up");
                }
                if self.draws == 3 {
                    panic!("TRACER_TEST_TOP_PANIC is set: panicking inside the view");
                }
            }
        }
        Ok(false)
    }

    fn draw(&mut self, rows: &[Row], status: &Status) -> Result<()> {
        let (sort, clock, now) = (self.sort, self.clock, monotonic_ns());
        self.terminal.draw(|f| draw(f, rows, status, sort, &clock, now)).context("drawing the view")?;
        self.terminal.backend_mut().flush().context("drawing the view")?;
        self.last_draw = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventBody, TaskInfo};
    use crate::explain::{Engine, EngineOptions};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    const S: u64 = 1_000_000_000;

    /// A real finding made by the engine (unix_missing), then shaped by the test.
    fn base() -> Finding {
        let mut e = Engine::new(EngineOptions::default());
        e.push(&Event {
            ts_ns: S,
            netns: 7,
            sock: 0xb000,
            task: TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() },
            body: EventBody::UnixConnectFailed { path: "/run/app.sock".into(), errno: libc::ENOENT },
        });
        e.finish();
        e.findings().remove(0)
    }

    fn named(fs: &[Finding]) -> Vec<Named> {
        fs.iter().map(|f| (f.clone(), None)).collect()
    }

    fn finding(cause: Cause, target: &str, count: u64, last_s: u64) -> Finding {
        let mut f = base();
        f.cause = cause;
        f.target = match target.strip_prefix("unix:") {
            Some(p) => Target::Unix(p.into()),
            None => Target::Tcp(target.parse().unwrap()),
        };
        f.count = count;
        f.pending = 0;
        f.listener = None;
        f.queue = None;
        f.first_seen_ns = last_s * S;
        f.last_seen_ns = last_s * S;
        f
    }

    fn gunicorn() -> ProcessRef {
        ProcessRef { pid: 700, comm: "gunicorn".into() }
    }

    fn targets(rows: &[Row]) -> Vec<String> {
        rows.iter().map(|r| r.target.to_string()).collect()
    }

    #[test]
    fn every_cause_has_a_row_that_names_it() {
        let all: Vec<Finding> = Cause::ALL.iter().enumerate().map(|(i, c)| finding(*c, &format!("127.0.0.1:{}", 8000 + i), 1, 10)).collect();
        let rows = rows(&named(&all), SortBy::Target);
        assert_eq!(rows.len(), Cause::ALL.len());
        for (r, cause) in rows.iter().zip(Cause::ALL) {
            let c = cells(r, &Clock::fixed(0), 11 * S);
            assert_eq!(c[4], format!("{} 1", cause.as_str()), "{c:?}");
            assert!(c[7].starts_with(cause.as_str()), "{c:?}");
        }
    }

    #[test]
    fn after_connect_rows_name_the_upstream_process_when_no_listener_is_known() {
        let mut killed = finding(Cause::UpstreamKilled, "127.0.0.1:8000", 2, 20);
        killed.upstream_process = Some(ProcessRef { pid: 701, comm: "gunicorn".into() });
        let r = &rows(&named(&[killed.clone()]), SortBy::Attempts)[0];
        assert_eq!(r.listener, Some(ProcessRef { pid: 701, comm: "gunicorn".into() }));
        assert_eq!(cells(r, &Clock::fixed(0), 21 * S)[5], "gunicorn 701");
        // A known listener still comes first.
        let mut dead = finding(Cause::DeadListener, "127.0.0.1:8000", 1, 10);
        dead.listener = Some(gunicorn());
        let r = &rows(&named(&[killed, dead]), SortBy::Attempts)[0];
        assert_eq!(r.listener, Some(gunicorn()));
    }

    #[test]
    fn one_row_per_target_with_failures_by_cause() {
        let mut dead = finding(Cause::DeadListener, "127.0.0.1:8000", 9, 20);
        dead.listener = Some(gunicorn());
        let mut backlog = finding(Cause::BacklogFull, "127.0.0.1:8000", 3, 10);
        backlog.queue = Some(Queue { len: 129, max: 128 });
        backlog.pending = 1;
        backlog.listener = Some(ProcessRef { pid: 650, comm: "gunicorn".into() });
        let unix = finding(Cause::UnixMissing, "unix:/run/app.sock", 2, 15);
        let rows = rows(&[(unix, None), (backlog, Some("app".into())), (dead, None)], SortBy::Attempts);
        assert_eq!(targets(&rows), ["127.0.0.1:8000", "unix:/run/app.sock"]);
        let r = &rows[0];
        assert_eq!(r.attempts, 12);
        assert_eq!(r.pending, 1);
        assert_eq!(r.by_cause, vec![(Cause::DeadListener, 9), (Cause::BacklogFull, 3)]);
        // The most recent finding speaks for the listener; the queue comes from the one that measured it.
        assert_eq!(r.listener, Some(gunicorn()));
        assert_eq!(r.queue, Some(Queue { len: 129, max: 128 }));
        assert_eq!((r.last_cause, r.last_seen_ns), (Cause::DeadListener, 20 * S));
        assert_eq!(r.upstream, "app");
        let c = cells(r, &Clock::fixed(0), 23 * S);
        assert_eq!(c[0], "127.0.0.1:8000");
        assert_eq!(c[2], "app");
        assert_eq!(cells(&rows[1], &Clock::fixed(0), 23 * S)[2], "-");
        assert_eq!(c[3], "12 (1 pending)");
        assert_eq!(c[4], "dead_listener 9, backlog_full 3");
        assert_eq!(c[5], "gunicorn 700");
        assert_eq!(c[6], "129/128");
        assert_eq!(c[7], "dead_listener 00:00:20 (3 s ago)");
        let u = cells(&rows[1], &Clock::fixed(0), 23 * S);
        assert_eq!((u[5].as_str(), u[6].as_str()), ("-", "-"));
    }

    #[test]
    fn the_same_target_in_two_namespaces_is_two_rows() {
        let a = finding(Cause::DeadListener, "127.0.0.1:8000", 1, 1);
        let mut b = a.clone();
        b.netns = 99;
        let rows = rows(&named(&[a, b]), SortBy::Target);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].netns, rows[1].netns), (7, 99));
    }

    #[test]
    fn every_sort_key_orders_rows() {
        let mut a = finding(Cause::DeadListener, "10.0.0.1:80", 5, 30);
        a.queue = None;
        let mut b = finding(Cause::BacklogFull, "10.0.0.2:80", 50, 10);
        b.queue = Some(Queue { len: 10, max: 128 });
        let mut c = finding(Cause::BacklogFull, "10.0.0.3:80", 1, 20);
        c.queue = Some(Queue { len: 2, max: 1 });
        let fs = named(&[a, b, c]);
        assert_eq!(targets(&rows(&fs, SortBy::Attempts)), ["10.0.0.2:80", "10.0.0.1:80", "10.0.0.3:80"]);
        assert_eq!(targets(&rows(&fs, SortBy::LastError)), ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.2:80"]);
        assert_eq!(targets(&rows(&fs, SortBy::Queue)), ["10.0.0.3:80", "10.0.0.2:80", "10.0.0.1:80"]);
        assert_eq!(targets(&rows(&fs, SortBy::Target)), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        // s cycles through every key and back.
        let mut s = SortBy::Attempts;
        let mut seen = vec![s];
        for _ in 0..3 {
            s = s.next();
            seen.push(s);
        }
        assert_eq!(seen, [SortBy::Attempts, SortBy::LastError, SortBy::Queue, SortBy::Target]);
        assert_eq!(s.next(), SortBy::Attempts);
    }

    #[test]
    fn no_findings_no_rows() {
        assert!(rows(&[], SortBy::Attempts).is_empty());
    }

    /// The screen `draw` makes on a width x height terminal, one string per line.
    fn render(rows: &[Row], sort: SortBy, (width, height): (u16, u16), events: u64) -> String {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        let status = Status { traced_s: 12, events, lost: 0, hooks_active: 9, hooks_total: 11 };
        t.draw(|f| draw(f, rows, &status, sort, &Clock::fixed(0), 23 * S)).unwrap();
        let buf = t.backend().buffer();
        (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn draws_the_status_line_header_and_rows() {
        let mut dead = finding(Cause::DeadListener, "127.0.0.1:8000", 9, 20);
        dead.listener = Some(gunicorn());
        let s = screen(&rows(&named(&[dead]), SortBy::Attempts), SortBy::Attempts);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "tracer top  00:00:23 UTC  traced 12 s  events 1234  lost 0  hooks 9/11  sort: attempts  (s: sort, q: quit)"
        );
        assert_eq!(lines[1], "");
        for h in HEADER {
            assert!(lines[2].contains(h), "header lacks {h}: {s}");
        }
        for cell in ["127.0.0.1:8000", "dead_listener 9", "gunicorn 700", "dead_listener 00:00:20 (3 s ago)"] {
            assert!(lines[3].contains(cell), "row lacks {cell:?}:\n{s}");
        }
        let empty = screen(&[], SortBy::Queue);
        assert!(empty.contains("sort: queue"), "{empty}");
        assert!(empty.contains("No failed upstream connections seen yet."), "{empty}");
    }

    #[test]
    fn columns_fit_their_content() {
        let mut unix = finding(Cause::UnixMissing, "unix:/run/gunicorn/gunicorn.sock", 2, 15);
        unix.netns = 4026531840;
        let mut backlog = finding(Cause::BacklogFull, "[2001:db8::1]:8000", 9, 20);
        backlog.queue = Some(Queue { len: 129, max: 128 });
        backlog.pending = 2;
        let mut dead = backlog.clone();
        dead.cause = Cause::DeadListener;
        dead.count = 1;
        dead.pending = 0;
        dead.last_seen_ns = 10 * S;
        let rows = rows(&[(unix, None), (backlog, Some("app_servers".into())), (dead, Some("app_servers".into()))], SortBy::Attempts);
        let s = screen(&rows, SortBy::Attempts);
        for text in [
            "unix:/run/gunicorn/gunicorn.sock",
            "4026531840",
            "[2001:db8::1]:8000",
            "app_servers",
            "10 (2 pending)",
            "backlog_full 9, dead_listener 1",
            "129/128",
            "backlog_full 00:00:20 (3 s ago)",
        ] {
            assert!(s.contains(text), "{text:?} is cut:\n{s}");
        }
    }

    fn screen(rows: &[Row], sort: SortBy) -> String {
        render(rows, sort, (160, 8), 1234)
    }

    /// A narrow terminal, with a seven-digit event count in the status line.
    fn screen_of(rows: &[Row], width: u16) -> String {
        render(rows, SortBy::Attempts, (width, 10), 1234567)
    }

    #[test]
    fn narrow_terminals_never_cut_a_number_and_mark_every_cut_cell() {
        let mut f = finding(Cause::DeadListener, "unix:/run/some/very/long/path/to/the/application.sock", 1234, 20);
        f.netns = 4026531840;
        f.listener = Some(ProcessRef { pid: 4_000_000, comm: "python3-service".into() });
        f.queue = Some(Queue { len: 4096, max: 4096 });
        let rows = rows(&named(&[f]), SortBy::Attempts);
        let texts: Vec<[String; 8]> = rows.iter().map(|r| cells(r, &Clock::fixed(0), 23 * S)).collect();
        for width in [200u16, 120, 90, 70, 50, 30] {
            let s = screen_of(&rows, width);
            let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
            let ws = fit_columns(&texts, width as usize);
            let used: usize = ws.iter().flatten().sum::<usize>() + COLUMN_SPACING * (ws.iter().flatten().count() - 1);
            assert!(used <= width as usize, "{width}: {ws:?}");
            // Numbers: whole or their column hidden (and counted), never a prefix.
            for (i, number) in [(1usize, "4026531840"), (3, "1234"), (6, "4096/4096")] {
                match ws[i] {
                    Some(_) => assert!(s.contains(number), "{width}: {number} cut:\n{s}"),
                    None => assert!(flat.contains("columns hidden: widen the terminal"), "{width}:\n{s}"),
                }
            }
            // The status line's numbers are whole too (it wraps).
            assert!(flat.contains("events 1234567"), "{width}:\n{s}");
            // Each text cell is whole or ends in the cut mark.
            for (i, w) in ws.iter().enumerate() {
                if let Some(w) = w {
                    if texts[0][i].chars().count() > *w {
                        assert!(s.contains(&cut(&texts[0][i], *w)), "{width}: column {i}:\n{s}");
                    }
                }
            }
        }
        assert!(screen_of(&rows, 200).contains("unix:/run/some/very/long/path/to/the/application.sock"));
        assert_eq!(cut("1234", 3), "12…");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn outside_strings_in_cells_are_escaped() {
        let mut f = finding(Cause::UnixMissing, "unix:/tmp/a", 1, 20);
        f.target = Target::Unix("/tmp/x\n\x1b[31mFIREWALL".into());
        f.listener = Some(ProcessRef { pid: 7, comm: "ev\x1bil".into() });
        let rows = rows(&[(f, Some("up\rstream".into()))], SortBy::Attempts);
        let c = cells(&rows[0], &Clock::fixed(0), 23 * S);
        assert_eq!(c[0], "unix:/tmp/x\\n\\x1b[31mFIREWALL");
        assert_eq!(c[2], "up\\rstream");
        assert_eq!(c[5], "ev\\x1bil 7");
    }

    #[test]
    fn preflight_refuses_json() {
        let e = preflight(true).unwrap_err().to_string();
        assert!(e.contains("tracer watch --json"), "{e}");
    }
}
