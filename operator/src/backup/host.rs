//! The Docker host side of backups (see below).
