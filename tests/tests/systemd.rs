//! End-to-end tests under a real systemd user manager, booted with
//! `systemd-nspawn` (`locald_tests::nspawn`): units, the user session,
//! container services as units. A binary of their own: each test boots a
//! machine, and they are the heaviest of the suite.

mod systemd_containers;
mod systemd_units;
mod systemd_user;
