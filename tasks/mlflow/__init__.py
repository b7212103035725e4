"""The MLflow record: the only package that imports mlflow. Everything a run leaves behind goes through here.

One experiment per task, one parent run per optimisation (resumed, not duplicated, after a crash: found by its
run key), per-iteration metrics with step, the candidates table rewritten whole after every iteration, and at
the end held-out metrics, a plot and the final prompt in the Prompt Registry. The MLflow client API is used
throughout (no fluent "active run"), so nothing here depends on global run state.

One module per idea:
  store    the client on the configured store, its one-time set-up, experiments, the store's errors
  locks    OS file locks: the store's set-up, one live writer per run
  shield   store calls that a stop signal cannot cut in half
  runs     a run found (and resumed) by its key, its owner, its tags, its end
  writes   what a run records: metrics, iterations, the candidates and masking tables, artifacts
  prompts  the Prompt Registry: versions, aliases, version tags
  queries  the read side: `pmpo runs`, `pmpo show`, a run's config, a flow run's record
  active   a run someone else opened (mlflow.genai.optimize_prompts), on the caller's store
"""
