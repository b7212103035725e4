"""pmpo where users already work: adapters to other tools' optimizer contracts.

Beside `flows` and `tasks`, above `pmpo`: `pmpo/` never imports these tools, so an adapter lives here.

  mlflow           `PmpoOptimizer`, a `BasePromptOptimizer` for `mlflow.genai.optimize_prompts`
  mlflow_examples  MLflow's training rows (inputs, expectations) as pmpo examples (no mlflow import)
"""
