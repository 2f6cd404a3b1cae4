//! The one submission path: every entry point (`spawn*`, `try_spawn*`, `reserve` and its
//! `Permit`, `spawn_blocking*`, batches, task builders) describes its item as [`Options`] and
//! hands it to [`Limiter::submit`], which wraps the work in the features it uses, in one fixed
//! order, and queues it in the core.
//!
//! The wrappers, innermost first, each in its own file and each knowing only the core:
//!
//! | wrapper | when | file |
//! |---|---|---|
//! | `Limited`: the run timeout and the token, while running | `timeout` / `cancel_on` | `timeout.rs` |
//! | `Placed`: a place in the bounded queue, given back at the start | `reserve` / `try_spawn` with `max_queued` | `place.rs` |
//! | `Timed`: the queue wait and run time, recorded in histograms | `Builder::distributions` | `distributions.rs` |
//! | `Measured`: the adaptive limit's sample | an adaptive limiter | `adaptive/mod.rs` |
//! | `Traced`: the item's span and events | a subscriber listening | `trace.rs` |
//!
//! Each stage below either wraps the work or passes it on as it is, so an item pays only for
//! the wrappers it uses: a type of its own per combination, not a field or a branch in the
//! item. What the core itself acts on (priority, weight, key, the queue deadline and token) is
//! not a wrapper: it goes into the item's cell and the manager's watch list.

use crate::adaptive::{Controller, Overload};
use crate::core::{Charge, Core, Props, Watch, Weighed, Work};
use crate::distributions::{Recorders, Timed};
use crate::handle::JoinHandle;
use crate::key::Key;
use crate::limiter::Limiter;
use crate::place::Placed;
use crate::sync::rt::sync::OwnedSemaphorePermit;
use crate::sync::Arc;
use crate::timeout::{Limited, Limits, RunLimits};
use crate::trace::Traced;

/// Everything a submission says about its item besides the work: what a `TaskBuilder`
/// collects, and what a `Permit` adds.
pub(crate) struct Options<O = ()> {
    pub(crate) priority: i32,
    pub(crate) weight: u32,
    pub(crate) key: Option<Key>,
    /// A place in the bounded queue, held until the item starts.
    pub(crate) place: Option<OwnedSemaphorePermit>,
    /// Time limits and a token; boxed, so that options without them stay small.
    pub(crate) limits: Option<Box<Limits>>,
    /// Tells the adaptive limit which outputs are overloads.
    pub(crate) overload: O,
}

impl Options {
    /// An item with no options, in `place` if it has one.
    pub(crate) fn new(place: Option<OwnedSemaphorePermit>) -> Options {
        Options {
            priority: 0,
            weight: 1,
            key: None,
            place,
            limits: None,
            overload: (),
        }
    }
}

impl<O> Options<O> {
    /// The same options with another overload classifier.
    pub(crate) fn with_overload<P>(self, overload: P) -> Options<P> {
        Options {
            priority: self.priority,
            weight: self.weight,
            key: self.key,
            place: self.place,
            limits: self.limits,
            overload,
        }
    }

    /// The time limits, made on first use.
    pub(crate) fn limits(&mut self) -> &mut Limits {
        self.limits.get_or_insert_with(Default::default)
    }

    /// What the item counts against the limits: `None` for weight 1 and no key.
    pub(crate) fn charge(&mut self) -> Option<Weighed> {
        (self.weight != 1 || self.key.is_some()).then(|| Weighed {
            weight: self.weight,
            key: self.key.take(),
        })
    }
}

/// What a submission does when the limiter is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnClosed {
    /// Resolves the item's handle cancelled (`spawn`).
    Cancel,
    /// Gives the work back (`try_spawn`).
    GiveBack,
}

impl<S> Limiter<S> {
    /// **The one submission path.** Wraps `work` in the features its options and the limiter
    /// use and queues it. `runs_to_end`: a blocking closure, which no time limit or abort stops
    /// once it runs. Returns the work only when the limiter is closed and `on_closed` says to
    /// give it back.
    #[inline]
    pub(crate) fn submit<W, O>(
        &self,
        work: W,
        runs_to_end: bool,
        mut options: Options<O>,
        on_closed: OnClosed,
    ) -> Result<JoinHandle<W::Output>, W>
    where
        W: Work,
        O: Overload<W::Output>,
    {
        let charge = options.charge();
        let (run, watch) = match options.limits.take() {
            None => (None, None),
            Some(limits) => limits.split(runs_to_end),
        };
        let props = Props {
            priority: options.priority,
            runs_to_end,
        };
        self.path(props, watch.as_ref(), on_closed).limited(
            work,
            run,
            options.place,
            charge,
            options.overload,
        )
    }

    /// [`submit`](Self::submit) for an item without options: `spawn`, `spawn_with`,
    /// `spawn_blocking` and the stateful ones.
    #[inline]
    pub(crate) fn submit_plain<W: Work>(
        &self,
        work: W,
        runs_to_end: bool,
    ) -> JoinHandle<W::Output> {
        let props = Props {
            priority: 0,
            runs_to_end,
        };
        match self
            .path(props, None, OnClosed::Cancel)
            .timed(work, None, ())
        {
            Ok(handle) => handle,
            Err(_) => unreachable!("`OnClosed::Cancel` never gives the work back"),
        }
    }

    fn path<'a>(&'a self, props: Props, watch: Option<&'a Watch>, on_closed: OnClosed) -> Path<'a> {
        Path {
            core: &self.inner.core,
            adaptive: self.inner.extras.adaptive.as_ref(),
            distributions: self.inner.extras.distributions.as_ref(),
            props,
            watch,
            on_closed,
        }
    }
}

/// The stages of one submission, innermost wrapper first.
struct Path<'a> {
    core: &'a Core,
    adaptive: Option<&'a Arc<Controller>>,
    distributions: Option<&'a Arc<Recorders>>,
    props: Props,
    watch: Option<&'a Watch>,
    on_closed: OnClosed,
}

impl Path<'_> {
    #[inline]
    fn limited<W: Work, O: Overload<W::Output>>(
        &self,
        work: W,
        run: Option<RunLimits>,
        place: Option<OwnedSemaphorePermit>,
        charge: Option<Weighed>,
        overload: O,
    ) -> Result<JoinHandle<W::Output>, W> {
        match run {
            None => self.placed(work, place, charge, overload),
            Some(run) => self
                .placed(Limited::new(work, run), place, charge, overload)
                .map_err(Limited::into_inner),
        }
    }

    #[inline]
    fn placed<W: Work, O: Overload<W::Output>>(
        &self,
        work: W,
        place: Option<OwnedSemaphorePermit>,
        charge: Option<Weighed>,
        overload: O,
    ) -> Result<JoinHandle<W::Output>, W> {
        match place {
            None => self.timed(work, charge, overload),
            Some(place) => self
                .timed(Placed::new(work, place), charge, overload)
                .map_err(Placed::into_inner),
        }
    }

    #[inline]
    fn timed<W: Work, O: Overload<W::Output>>(
        &self,
        work: W,
        charge: Option<Weighed>,
        overload: O,
    ) -> Result<JoinHandle<W::Output>, W> {
        match self.distributions {
            None => self.measured(work, charge, overload),
            Some(recorders) => self
                .measured(Timed::new(work, recorders.clone()), charge, overload)
                .map_err(Timed::into_inner),
        }
    }

    #[inline]
    fn measured<W: Work, O: Overload<W::Output>>(
        &self,
        work: W,
        charge: Option<Weighed>,
        overload: O,
    ) -> Result<JoinHandle<W::Output>, W> {
        match self.adaptive {
            None => self.traced(work, charge),
            Some(controller) => self
                .traced(controller.measure(work, overload), charge)
                .map_err(|measured| measured.into_inner()),
        }
    }

    #[inline]
    fn traced<W: Work>(
        &self,
        work: W,
        charge: Option<Weighed>,
    ) -> Result<JoinHandle<W::Output>, W> {
        if tracing::enabled!(target: "task_limiter", tracing::Level::DEBUG) {
            let traced = Traced::new(work, self.core.name());
            self.charged(traced, charge).map_err(Traced::into_inner)
        } else {
            self.charged(work, charge)
        }
    }

    #[inline]
    fn charged<W: Work>(
        &self,
        work: W,
        charge: Option<Weighed>,
    ) -> Result<JoinHandle<W::Output>, W> {
        match charge {
            None => self.queued(work, ()),
            Some(charge) => self.queued(work, charge),
        }
    }

    #[inline]
    fn queued<W: Work, C: Charge>(&self, work: W, charge: C) -> Result<JoinHandle<W::Output>, W> {
        match self.core.submit(work, self.props, charge, self.watch) {
            Ok(cell) => Ok(JoinHandle::new(cell)),
            Err(refused) => match self.on_closed {
                OnClosed::Cancel => Ok(JoinHandle::new(refused.cancel(self.core))),
                OnClosed::GiveBack => Err(refused.into_work(self.core)),
            },
        }
    }
}
