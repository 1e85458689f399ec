//! Diesel's view of the tables created by `migrations/`. A test checks that every
//! column named here exists in a freshly migrated database.

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        name -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Int8,
        user_id -> Int8,
        name -> Text,
        prefix -> Text,
        secret_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        expires_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    worker_pools (id) {
        id -> Int8,
        name -> Text,
        description -> Text,
        generation -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        // Spaces (migration 2026-12-09-001500_spaces).
        space_id -> Int8,
    }
}

diesel::table! {
    workers (id) {
        id -> Int8,
        pool_id -> Int8,
        name -> Text,
        pool_generation -> Int4,
        cert_serial -> Text,
        cert_not_after -> Timestamptz,
        status -> Text,
        metadata -> Jsonb,
        registered_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        // SHA-256 of the worker's broker token (migration 2026-11-27-000300_worker_credentials).
        token_hash -> Nullable<Text>,
        // Set by an operator (migration 2026-11-28-000500_worker_api).
        drained -> Bool,
    }
}

diesel::table! {
    stacks (id) {
        id -> Int8,
        slug -> Text,
        name -> Text,
        description -> Text,
        repository -> Text,
        branch -> Text,
        project_root -> Text,
        tool -> Text,
        tool_version -> Text,
        worker_pool_id -> Nullable<Int8>,
        autodeploy -> Bool,
        labels -> Array<Text>,
        needs_reconciliation -> Bool,
        drift_schedule -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        // The VCS integration the stack's repository lives on (migration 2026-11-28-000800_vcs).
        vcs_integration_id -> Nullable<Int8>,
        // Drift detection (migration 2026-12-07-001100_stack_drift).
        drift_reconcile -> Bool,
        drift_checked_at -> Nullable<Timestamptz>,
        drift_run_id -> Nullable<Int8>,
        drift_detected_at -> Nullable<Timestamptz>,
        drifted_resources -> Nullable<Jsonb>,
        // Spaces (migration 2026-12-09-001500_spaces).
        space_id -> Int8,
    }
}

// Stack dependencies (migration 2026-12-08-001200_stack_dependencies).
diesel::table! {
    stack_dependencies (stack_id, depends_on_id) {
        stack_id -> Int8,
        depends_on_id -> Int8,
        outputs -> Jsonb,
        created_at -> Timestamptz,
    }
}
diesel::allow_tables_to_appear_in_same_query!(stack_dependencies, stacks);

diesel::table! {
    runs (id) {
        id -> Int8,
        stack_id -> Int8,
        kind -> Text,
        state -> Text,
        commit_sha -> Text,
        branch -> Text,
        command -> Nullable<Text>,
        triggered_by -> Text,
        worker_id -> Nullable<Int8>,
        lease_expires_at -> Nullable<Timestamptz>,
        failure_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        run_token_id -> Nullable<Text>,
        run_token_hash -> Nullable<Text>,
        // What the worker reported (migration 2026-11-28-000500_worker_api).
        changes -> Nullable<Jsonb>,
        plan_key -> Nullable<Text>,
        errored_state_key -> Nullable<Text>,
        errored_state_data_key -> Nullable<Int8>,
        // The sealed `terraform show -json` output (migration 2026-12-07-000900_policies).
        plan_json_key -> Nullable<Text>,
        // The commit's subject, as the worker read it (migration 2026-12-07-001000_run_commit_message).
        commit_message -> Nullable<Text>,
    }
}

diesel::table! {
    run_events (id) {
        id -> Int8,
        run_id -> Int8,
        from_state -> Nullable<Text>,
        to_state -> Text,
        cause -> Text,
        actor -> Text,
        at -> Timestamptz,
    }
}

diesel::table! {
    jobs (id) {
        id -> Int8,
        queue -> Text,
        kind -> Text,
        payload -> Jsonb,
        unique_key -> Nullable<Text>,
        state -> Text,
        attempts -> Int4,
        max_attempts -> Int4,
        run_at -> Timestamptz,
        locked_by -> Nullable<Text>,
        locked_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    job_keys (queue, unique_key) {
        queue -> Text,
        unique_key -> Text,
        job_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Int8,
        actor -> Text,
        action -> Text,
        target -> Text,
        details -> Jsonb,
        at -> Timestamptz,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(workers -> worker_pools (pool_id));
diesel::joinable!(stacks -> worker_pools (worker_pool_id));
diesel::joinable!(runs -> stacks (stack_id));
diesel::joinable!(runs -> workers (worker_id));
diesel::joinable!(run_events -> runs (run_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    api_keys,
    worker_pools,
    workers,
    stacks,
    runs,
    run_events,
    jobs,
    job_keys,
    audit_events,
    sessions,
    contexts,
    context_attachments,
    data_keys,
    variables,
    state_versions,
    state_locks,
);

diesel::table! {
    processes (id) {
        id -> Text,
        kind -> Text,
        hostname -> Text,
        pid -> Int4,
        version -> Text,
        started_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        leader -> Bool,
    }
}

diesel::table! {
    scheduler_entries (name) {
        name -> Text,
        schedule -> Text,
        last_fire_at -> Nullable<Timestamptz>,
        last_fired_by -> Nullable<Text>,
        fires -> Int8,
    }
}

// ---- the API (migration 2026-11-27-000100_api) ----

diesel::table! {
    sessions (id) {
        id -> Int8,
        user_id -> Int8,
        token_id -> Text,
        token_hash -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    contexts (id) {
        id -> Int8,
        slug -> Text,
        name -> Text,
        description -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        // Spaces (migration 2026-12-09-001500_spaces).
        space_id -> Int8,
    }
}

diesel::table! {
    context_attachments (stack_id, context_id) {
        stack_id -> Int8,
        context_id -> Int8,
        priority -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    data_keys (id) {
        id -> Int8,
        wrapped -> Bytea,
        master_key_id -> Text,
        created_at -> Timestamptz,
        rewrapped_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    variables (id) {
        id -> Int8,
        stack_id -> Nullable<Int8>,
        context_id -> Nullable<Int8>,
        name -> Text,
        secret -> Bool,
        value -> Nullable<Text>,
        sealed -> Nullable<Bytea>,
        data_key_id -> Nullable<Int8>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(context_attachments -> stacks (stack_id));
diesel::joinable!(context_attachments -> contexts (context_id));
diesel::joinable!(variables -> stacks (stack_id));
diesel::joinable!(variables -> contexts (context_id));
diesel::joinable!(variables -> data_keys (data_key_id));

// ---- VCS integrations (migration 2026-11-28-000800_vcs) ----

diesel::table! {
    vcs_integrations (id) {
        id -> Int8,
        name -> Text,
        kind -> Text,
        base_url -> Text,
        username -> Nullable<Text>,
        token_sealed -> Nullable<Bytea>,
        token_key_id -> Nullable<Int8>,
        secret_sealed -> Nullable<Bytea>,
        secret_key_id -> Nullable<Int8>,
        ca_pem -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        // Spaces (migration 2026-12-09-001500_spaces).
        space_id -> Int8,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        integration_id -> Int8,
        delivery_id -> Text,
        event -> Text,
        received_at -> Timestamptz,
        processed_at -> Nullable<Timestamptz>,
        outcome -> Text,
        detail -> Nullable<Text>,
        run_ids -> Array<Int8>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    vcs_runs (run_id) {
        run_id -> Int8,
        integration_id -> Int8,
        repository -> Text,
        pull_request -> Nullable<Int8>,
        reported -> Nullable<Text>,
    }
}

diesel::table! {
    vcs_poll_heads (integration_id, repository) {
        integration_id -> Int8,
        repository -> Text,
        refs -> Jsonb,
        polled_at -> Timestamptz,
    }
}

diesel::joinable!(stacks -> vcs_integrations (vcs_integration_id));
diesel::joinable!(webhook_deliveries -> vcs_integrations (integration_id));
diesel::joinable!(vcs_runs -> runs (run_id));
diesel::joinable!(vcs_runs -> vcs_integrations (integration_id));
diesel::joinable!(vcs_poll_heads -> vcs_integrations (integration_id));
diesel::allow_tables_to_appear_in_same_query!(vcs_integrations, webhook_deliveries, vcs_runs, vcs_poll_heads, stacks);
diesel::allow_tables_to_appear_in_same_query!(vcs_runs, runs);
diesel::allow_tables_to_appear_in_same_query!(vcs_integrations, runs);

// ---- run logs (migration 2026-11-28-000600_run_logs) ----

diesel::table! {
    run_log_chunks (run_id, phase, seq) {
        run_id -> Int8,
        phase -> Text,
        seq -> Int8,
        size -> Int4,
        sha256 -> Text,
        stored -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(run_log_chunks -> runs (run_id));

// ---- the worker API (migration 2026-11-28-000500_worker_api) ----

diesel::table! {
    join_tokens (id) {
        id -> Int8,
        token_id -> Text,
        token_hash -> Text,
        pool_id -> Int8,
        created_by -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        worker_id -> Nullable<Int8>,
    }
}

diesel::joinable!(join_tokens -> worker_pools (pool_id));

// ---- the state backend (migration 2026-11-28-000700_state_backend) ----

diesel::table! {
    state_versions (id) {
        id -> Int8,
        stack_id -> Int8,
        serial -> Int8,
        lineage -> Text,
        md5 -> Text,
        size -> Int8,
        object_key -> Text,
        data_key_id -> Int8,
        run_id -> Nullable<Int8>,
        user_id -> Nullable<Int8>,
        created_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    state_locks (stack_id) {
        stack_id -> Int8,
        lock_id -> Text,
        info -> Text,
        run_id -> Nullable<Int8>,
        user_id -> Nullable<Int8>,
        held_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(state_versions -> stacks (stack_id));
diesel::joinable!(state_locks -> stacks (stack_id));

// Policies (migration 2026-12-07-000900_policies).
diesel::table! {
    policies (id) {
        id -> Int8,
        name -> Text,
        kind -> Text,
        description -> Text,
        labels -> Array<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        // Spaces (migration 2026-12-09-001500_spaces).
        space_id -> Int8,
    }
}

diesel::table! {
    policy_versions (id) {
        id -> Int8,
        policy_id -> Int8,
        version -> Int4,
        body -> Text,
        created_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    stack_policies (stack_id, policy_id) {
        stack_id -> Int8,
        policy_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    policy_evaluations (id) {
        id -> Int8,
        // Null for a push a push policy kept from making a run
        // (migration 2026-12-10-001600_push_policies); `stack_id` is then set.
        run_id -> Nullable<Int8>,
        stack_id -> Nullable<Int8>,
        policy_id -> Nullable<Int8>,
        policy_version_id -> Nullable<Int8>,
        policy_name -> Text,
        policy_version -> Int4,
        kind -> Text,
        result -> Text,
        messages -> Jsonb,
        error -> Nullable<Text>,
        duration_us -> Int8,
        input_bytes -> Int8,
        input_sealed -> Nullable<Bytea>,
        input_data_key -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    run_reviews (id) {
        id -> Int8,
        run_id -> Int8,
        user_id -> Int8,
        reviewer -> Text,
        role -> Text,
        decision -> Text,
        note -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(policy_versions -> policies (policy_id));
diesel::joinable!(stack_policies -> policies (policy_id));
diesel::joinable!(stack_policies -> stacks (stack_id));
diesel::allow_tables_to_appear_in_same_query!(policies, policy_versions, stack_policies, stacks);

// The private module registry (migration 2026-12-08-001300_module_registry).
diesel::table! {
    modules (id) {
        id -> Int8,
        namespace -> Text,
        name -> Text,
        system -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    module_versions (id) {
        id -> Int8,
        module_id -> Int8,
        version -> Text,
        repository -> Text,
        tag -> Text,
        commit_sha -> Text,
        tree_sha -> Text,
        object_key -> Text,
        sha256 -> Text,
        size -> Int8,
        published_by -> Text,
        published_at -> Timestamptz,
    }
}

diesel::joinable!(module_versions -> modules (module_id));
diesel::allow_tables_to_appear_in_same_query!(modules, module_versions);

// ---- Spaces (migration 2026-12-09-001500_spaces) ----

diesel::table! {
    spaces (id) {
        id -> Int8,
        slug -> Text,
        name -> Text,
        description -> Text,
        parent_id -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    space_grants (id) {
        id -> Int8,
        space_id -> Int8,
        user_id -> Nullable<Int8>,
        api_key_id -> Nullable<Int8>,
        role -> Text,
        granted_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(space_grants -> spaces (space_id));
diesel::joinable!(stacks -> spaces (space_id));
diesel::allow_tables_to_appear_in_same_query!(spaces, space_grants);
diesel::allow_tables_to_appear_in_same_query!(spaces, stacks);
diesel::allow_tables_to_appear_in_same_query!(space_grants, stacks);
diesel::allow_tables_to_appear_in_same_query!(spaces, users);
diesel::allow_tables_to_appear_in_same_query!(space_grants, users);
diesel::allow_tables_to_appear_in_same_query!(spaces, api_keys);
diesel::allow_tables_to_appear_in_same_query!(space_grants, api_keys);
diesel::allow_tables_to_appear_in_same_query!(spaces, contexts);
diesel::allow_tables_to_appear_in_same_query!(space_grants, contexts);
diesel::allow_tables_to_appear_in_same_query!(spaces, worker_pools);
diesel::allow_tables_to_appear_in_same_query!(space_grants, worker_pools);
diesel::allow_tables_to_appear_in_same_query!(spaces, vcs_integrations);
diesel::allow_tables_to_appear_in_same_query!(space_grants, vcs_integrations);
diesel::allow_tables_to_appear_in_same_query!(spaces, policies);
diesel::allow_tables_to_appear_in_same_query!(space_grants, policies);
diesel::allow_tables_to_appear_in_same_query!(spaces, runs);
diesel::allow_tables_to_appear_in_same_query!(space_grants, runs);

diesel::table! {
    // Moved by every change to spaces or grants
    // (migration 2026-12-10-001700_access_generation).
    access_generation (only_row) {
        only_row -> Bool,
        n -> Int8,
    }
}
