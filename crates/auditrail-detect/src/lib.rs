//! Detection rules and silence alarms over a node's stored events.
//!
//! [`Detector`] sees each stored event once, in seq order, and counts the
//! events each rule matches per key (actor, service, tenant or client
//! address) over a sliding window of receive time. When a key's count goes
//! over the rule's threshold it yields an [`Alert`], once, and again only
//! after the count has fallen back to the threshold: a burst of deletions is
//! one alert, not one per deletion. [`SilenceWatch`] tracks when each
//! declared service last sent an event and says when one has been quiet for
//! longer than allowed, and when it speaks again.
//!
//! Both run on receive times, not on the clocks of the senders, so a client
//! with a wrong clock can neither hide a burst nor raise a false one; the
//! watch is given "now" by its caller, which is what makes it testable
//! with a fake clock.

mod rule;
mod silence;

pub use rule::{Alert, Detector, GroupBy, Rule, RuleError, RuleSpec};
pub use silence::{Silence, SilenceChange, SilenceWatch};
