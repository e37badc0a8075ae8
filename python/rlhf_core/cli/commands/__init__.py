"""One module per command group, each a ``run_<command>(cfg) -> exit status`` per command:
``train`` (sft, reward, dpo, ppo, grpo, rloo, reinforce-pp, best-of-n), ``label``, ``eval``,
``demo``. :data:`rlhf_core.cli.parser.COMMANDS` names them; they are imported only when their
command runs."""
