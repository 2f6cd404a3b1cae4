//! The limiter's tracing: every item runs in a `task_limiter.item` span that is a child of the
//! span current when it was submitted and carries `limiter` and `worker.id`; its life is told by
//! `trace!`/`debug!` events with `waited_us` and `ran_us`; nothing is logged at `info` or above.
//!
//! One global subscriber records everything (the limiter's tasks run on runtime threads, which a
//! thread-local default would not reach). Tests run in parallel, so each one names its limiter
//! and its spans uniquely and looks only at what belongs to it.
// Real tokio: under the `shuttle` feature the crate runs on shuttle-tokio (tests/shuttle.rs).
#![cfg(not(feature = "shuttle"))]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use task_limiter::Limiter;
use tokio::sync::oneshot;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// === the recorder ===

#[derive(Clone, Debug)]
struct SpanRecord {
    name: &'static str,
    target: &'static str,
    level: Level,
    /// Index of the parent span's record, as the registry resolved it.
    parent: Option<usize>,
    fields: Fields,
}

#[derive(Clone, Debug)]
struct EventRecord {
    level: Level,
    target: &'static str,
    /// Index of the span the event belongs to (explicit parent, else the current span).
    span: Option<usize>,
    fields: Fields,
}

impl EventRecord {
    fn message(&self) -> &str {
        self.fields.get("message").unwrap_or("")
    }
}

/// Field values as text: strings as they are, everything else through `Debug`.
#[derive(Clone, Debug, Default)]
struct Fields(BTreeMap<&'static str, String>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The field parsed as a number; panics if it is missing.
    fn u64(&self, name: &str) -> u64 {
        let value = self
            .get(name)
            .unwrap_or_else(|| panic!("no field `{name}` in {self:?}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("`{name}` = {value:?} is not a number"))
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

#[derive(Debug, Default)]
struct Records {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// Where a span's record lives, kept in the span's extensions (span IDs are reused).
struct RecordIndex(usize);

struct Recorder(&'static Mutex<Records>);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a new span is in the registry");
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<RecordIndex>().map(|i| i.0));
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let index = {
            let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            records.spans.push(SpanRecord {
                name: attrs.metadata().name(),
                target: attrs.metadata().target(),
                level: *attrs.metadata().level(),
                parent,
                fields,
            });
            records.spans.len() - 1
        };
        span.extensions_mut().insert(RecordIndex(index));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<RecordIndex>().map(|i| i.0));
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .push(EventRecord {
                level: *event.metadata().level(),
                target: event.metadata().target(),
                span,
                fields,
            });
    }
}

/// Installs the recording subscriber once for the whole test binary.
fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<&'static Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let records: &'static Mutex<Records> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::registry().with(Recorder(records));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        records
    })
}

fn lock() -> MutexGuard<'static, Records> {
    // A failed assertion in one test must not take the others' records with it.
    records().lock().unwrap_or_else(PoisonError::into_inner)
}

impl Records {
    /// The one span named `name` whose field `key` is `value`.
    fn span_with(&self, name: &str, key: &str, value: &str) -> usize {
        let found: Vec<usize> = (0..self.spans.len())
            .filter(|&i| self.spans[i].name == name && self.spans[i].fields.get(key) == Some(value))
            .collect();
        assert_eq!(found.len(), 1, "spans {name} with {key} = {value}");
        found[0]
    }

    /// The item spans of the limiter named `limiter`.
    fn item_spans(&self, limiter: &str) -> Vec<usize> {
        (0..self.spans.len())
            .filter(|&i| {
                self.spans[i].name == "task_limiter.item"
                    && self.spans[i].fields.get("limiter") == Some(limiter)
            })
            .collect()
    }

    /// The events that belong to span `span`.
    fn events_in(&self, span: usize) -> Vec<&EventRecord> {
        self.events
            .iter()
            .filter(|e| e.span == Some(span))
            .collect()
    }

    /// The one event in span `span` from the limiter with this message.
    fn limiter_event(&self, span: usize, message: &str) -> &EventRecord {
        let found: Vec<_> = self
            .events_in(span)
            .into_iter()
            .filter(|e| e.target == "task_limiter" && e.message() == message)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{message:?} events in {:?}: {:?}",
            self.spans[span],
            self.events_in(span)
        );
        found[0]
    }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_spans_are_children_of_the_submitting_span() {
    records();
    const LIMITER: &str = "tracing-parent";
    const LIMIT: usize = 3;
    const ITEMS: u64 = 40;
    let limiter = Limiter::builder().limit(LIMIT).name(LIMITER).build();

    let handles: Vec<_> = (0..ITEMS)
        .map(|i| {
            let request = tracing::info_span!("request", test = LIMITER, n = i);
            request.in_scope(|| {
                limiter.spawn_with(move |worker| async move {
                    tokio::task::yield_now().await;
                    tracing::info!(n = i, "inside the item");
                    worker
                })
            })
        })
        .collect();
    let mut ran_on = Vec::new();
    for handle in handles {
        ran_on.push(handle.await.unwrap().index());
    }
    limiter.close();
    limiter.wait().await;

    let records = lock();
    assert_eq!(records.item_spans(LIMITER).len(), ITEMS as usize);
    for i in 0..ITEMS {
        let n = i.to_string();
        let request = records
            .spans
            .iter()
            .position(|s| {
                s.name == "request"
                    && s.fields.get("test") == Some(LIMITER)
                    && s.fields.get("n") == Some(&n)
            })
            .expect("the request span was recorded");

        // The item span: a child of the request span that was current at submission.
        let children: Vec<usize> = (0..records.spans.len())
            .filter(|&s| records.spans[s].parent == Some(request))
            .collect();
        assert_eq!(children.len(), 1, "item {i}: children of its request span");
        let item = children[0];
        let span = &records.spans[item];
        assert_eq!(span.name, "task_limiter.item");
        assert_eq!(span.target, "task_limiter");
        assert_eq!(span.level, Level::DEBUG);
        assert_eq!(span.fields.get("limiter"), Some(LIMITER));
        let worker = span.fields.u64("worker.id");
        assert!(worker < LIMIT as u64, "item {i} ran on worker {worker}");
        assert_eq!(
            worker, ran_on[i as usize] as u64,
            "the span names the item's worker"
        );

        // The item's own events are inside its span.
        let inside: Vec<_> = records
            .events_in(item)
            .into_iter()
            .filter(|e| e.message() == "inside the item")
            .collect();
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].fields.get("n"), Some(n.as_str()));

        // So are the limiter's lifecycle events, with their timings.
        let started = records.limiter_event(item, "item started");
        assert_eq!(started.level, Level::TRACE);
        started.fields.u64("waited_us");
        let finished = records.limiter_event(item, "item finished");
        assert_eq!(finished.level, Level::TRACE);
        finished.fields.u64("ran_us");

        // "item queued" is told in the submitter's span, naming the limiter.
        let queued: Vec<_> = records
            .events_in(request)
            .into_iter()
            .filter(|e| e.target == "task_limiter")
            .collect();
        assert_eq!(queued.len(), 1, "item {i}: {queued:?}");
        assert_eq!(queued[0].message(), "item queued");
        assert_eq!(queued[0].level, Level::TRACE);
        assert_eq!(queued[0].fields.get("limiter"), Some(LIMITER));
    }
}

#[tokio::test]
async fn the_innermost_span_is_the_parent() {
    records();
    const LIMITER: &str = "tracing-nesting";
    let limiter = Limiter::builder().limit(1).name(LIMITER).build();

    let outer = tracing::info_span!("outer", test = LIMITER);
    let inner = outer.in_scope(|| tracing::debug_span!("inner", test = LIMITER));
    let nested = inner.in_scope(|| limiter.spawn(async { "nested" }));
    // None of the test's spans is current here: the item span's parent is what is current here
    // (nothing, or tokio's own task span under tokio_unstable), as for `outer` above, and never
    // what is current in the worker.
    let root = limiter.spawn(async { "root" });
    // Submitted from inside another item: its parent is that item's span. (Its handle is
    // dropped, so it runs detached; `wait` below sees it done.)
    let from_item = {
        let limiter = limiter.clone();
        inner.in_scope(|| {
            limiter.clone().spawn(async move {
                drop(limiter.spawn(async {}));
            })
        })
    };
    assert_eq!(nested.await.unwrap(), "nested");
    assert_eq!(root.await.unwrap(), "root");
    from_item.await.unwrap();
    limiter.close();
    limiter.wait().await;

    let records = lock();
    let outer = records.span_with("outer", "test", LIMITER);
    let inner = records.span_with("inner", "test", LIMITER);
    assert_eq!(records.spans[inner].parent, Some(outer));

    let items = records.item_spans(LIMITER);
    assert_eq!(items.len(), 4);
    let parents: Vec<Option<usize>> = items.iter().map(|&s| records.spans[s].parent).collect();
    // In submission order: nested, root, the submitting item, the item it submitted.
    assert_eq!(
        parents,
        [
            Some(inner),
            records.spans[outer].parent,
            Some(inner),
            Some(items[2])
        ],
        "parents of the item spans"
    );
    for &item in &items {
        assert_eq!(records.spans[item].fields.get("worker.id"), Some("0"));
    }
}

#[cfg(panic = "unwind")]
#[tokio::test]
async fn a_panicking_item_says_so_in_its_span() {
    records();
    const LIMITER: &str = "tracing-panic";
    let limiter = Limiter::builder().limit(2).name(LIMITER).build();
    let handle = limiter.spawn(async {
        tokio::task::yield_now().await;
        panic!("boom");
    });
    assert!(handle.await.unwrap_err().is_panic());
    limiter.close();
    limiter.wait().await;

    let records = lock();
    let items = records.item_spans(LIMITER);
    assert_eq!(items.len(), 1);
    records
        .limiter_event(items[0], "item started")
        .fields
        .u64("waited_us");
    let panicked = records.limiter_event(items[0], "item panicked");
    assert_eq!(panicked.level, Level::DEBUG);
    panicked.fields.u64("ran_us");
    assert!(records
        .events_in(items[0])
        .iter()
        .all(|e| e.message() != "item finished"));
}

#[tokio::test]
async fn an_aborted_running_item_says_cancelled_in_its_span() {
    records();
    const LIMITER: &str = "tracing-abort-running";
    let limiter = Limiter::builder().limit(2).name(LIMITER).build();
    let (started_tx, started_rx) = oneshot::channel();
    let handle = limiter.spawn(async move {
        started_tx.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    started_rx.await.unwrap();
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    limiter.close();
    limiter.wait().await;

    let records = lock();
    let items = records.item_spans(LIMITER);
    assert_eq!(items.len(), 1);
    let cancelled = records.limiter_event(items[0], "item cancelled");
    assert_eq!(cancelled.level, Level::DEBUG);
    cancelled.fields.u64("ran_us");
}

#[tokio::test]
async fn shutdown_says_cancelled_for_running_and_queued_items() {
    records();
    const LIMITER: &str = "tracing-shutdown";
    let limiter = Limiter::builder().limit(1).name(LIMITER).build();
    let (started_tx, started_rx) = oneshot::channel();
    let request = tracing::info_span!("request", test = LIMITER);
    let (running, queued) = request.in_scope(|| {
        let running = limiter.spawn(async move {
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        let queued = limiter.spawn(async {});
        (running, queued)
    });
    started_rx.await.unwrap();
    limiter.shutdown().await;
    assert!(running.await.unwrap_err().is_cancelled());
    assert!(queued.await.unwrap_err().is_cancelled());

    let records = lock();
    let request = records.span_with("request", "test", LIMITER);
    // Only the running item got a span; its end is told inside it.
    let items = records.item_spans(LIMITER);
    assert_eq!(items.len(), 1);
    assert_eq!(records.spans[items[0]].parent, Some(request));
    let cancelled = records.limiter_event(items[0], "item cancelled");
    assert_eq!(cancelled.level, Level::DEBUG);
    cancelled.fields.u64("ran_us");
    // The queued item never started: its cancellation is told in the span it was submitted
    // from, with how long it waited.
    let cancelled = records.limiter_event(request, "item cancelled");
    assert_eq!(cancelled.level, Level::DEBUG);
    cancelled.fields.u64("waited_us");
    assert_eq!(cancelled.fields.get("ran_us"), None);
}

#[tokio::test]
async fn an_item_aborted_while_queued_says_cancelled() {
    records();
    const LIMITER: &str = "tracing-abort-queued";
    let limiter = Limiter::builder().limit(1).name(LIMITER).build();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let blocker = limiter.spawn(async move {
        let _ = release_rx.await;
    });
    let request = tracing::info_span!("request", test = LIMITER);
    let queued = request.in_scope(|| limiter.spawn(async {}));
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    release_tx.send(()).unwrap();
    blocker.await.unwrap();
    limiter.close();
    limiter.wait().await;

    let records = lock();
    let request = records.span_with("request", "test", LIMITER);
    let cancelled = records.limiter_event(request, "item cancelled");
    assert_eq!(cancelled.level, Level::DEBUG);
    cancelled.fields.u64("waited_us");
    // It never ran: no span of its own.
    assert!(records
        .item_spans(LIMITER)
        .iter()
        .all(|&s| records.spans[s].parent != Some(request)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_logged_at_info_or_above() {
    records();
    const LIMITER: &str = "tracing-levels";
    let limiter = Limiter::builder().limit(4).name(LIMITER).build();
    let handles: Vec<_> = (0..2_000u32)
        .map(|i| {
            limiter.spawn(async move {
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                i
            })
        })
        .collect();
    handles[1_999].abort();
    limiter.set_limit(2);
    let mut done = 0;
    for handle in handles {
        done += u32::from(handle.await.is_ok());
    }
    assert!(done >= 1_999);
    limiter.shutdown().await;

    // Every test in this binary has run some of its work by now or will check later; all of
    // the limiter's records so far, from every test, must be below `info`.
    let records = lock();
    assert!(records.item_spans(LIMITER).len() >= 1_999);
    for span in records.spans.iter().filter(|s| s.target == "task_limiter") {
        assert!(span.level > Level::INFO, "span at {}: {span:?}", span.level);
    }
    for event in records.events.iter().filter(|e| e.target == "task_limiter") {
        assert!(
            event.level > Level::INFO,
            "event at {}: {event:?}",
            event.level
        );
    }
}
