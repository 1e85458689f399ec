//! Who may do what: the one table of the role each read and each change needs.
//! The GraphQL API checks it in every resolver; the web console reads through
//! the same table (and changes only through the API's operations), and shows
//! a control only to a caller whose role the table allows.

use hangar_types::Role;

/// A read or a change, as the role table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Stacks, runs, logs, state versions, pools and workers, contexts,
    /// variables (never a secret's value), webhook deliveries.
    Read,
    /// Create, change and delete stacks, contexts and variables; trigger,
    /// confirm, discard and cancel runs; link stacks to VCS integrations.
    Write,
    /// The list of users and every user's API keys.
    ListUsers,
    /// Create users, change their role, disable them.
    ManageUsers,
    /// The list of VCS integrations (their settings name the git servers).
    ListVcs,
    /// Create, change and delete VCS integrations.
    ManageVcs,
    /// Create, reset and delete worker pools; join tokens; drain, undrain and
    /// revoke workers.
    ManagePools,
    /// The audit trail.
    ReadAudit,
    /// Dead jobs, and putting them back in the queue.
    ManageJobs,
    /// Remove a state lock, import a state.
    ManageState,
    /// The host's facts: services, certificates, disks.
    ReadSystem,
    /// Create and save policies, attach and detach them, and replay them
    /// against recorded inputs (which hold plans).
    ManagePolicies,
}

impl Op {
    /// The least role that may do this.
    pub const fn role(self) -> Role {
        match self {
            Op::Read => Role::Reader,
            Op::Write => Role::Writer,
            Op::ListUsers
            | Op::ManageUsers
            | Op::ListVcs
            | Op::ManageVcs
            | Op::ManagePools
            | Op::ReadAudit
            | Op::ManageJobs
            | Op::ManageState
            | Op::ReadSystem
            | Op::ManagePolicies => Role::Admin,
        }
    }

    /// Whether a caller with `role` may do this.
    pub fn allowed(self, role: Role) -> bool {
        role.allows(self.role())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert!(Op::Read.allowed(Role::Reader));
        assert!(!Op::Write.allowed(Role::Reader) && Op::Write.allowed(Role::Writer));
        for admin_only in [Op::ListUsers, Op::ManageVcs, Op::ManagePools, Op::ReadAudit, Op::ManageState, Op::ReadSystem, Op::ManagePolicies] {
            assert!(!admin_only.allowed(Role::Writer) && admin_only.allowed(Role::Admin), "{admin_only:?}");
        }
    }
}
