"""The demo's stages, one module each, in the order :func:`rlhf_core.demo.run_demo` runs them:

- :mod:`.sft` — the built-in model learns the synthetic language;
- :mod:`.preferences` — gold-labelled pairs of SFT samples (Bradley-Terry noise);
- :mod:`.reward` — the proxy reward model on those pairs;
- :mod:`.baseline` — the SFT policy at the evaluation point every method starts from;
- :mod:`.best_of_n`, :mod:`.rl` (PPO and GRPO), :mod:`.dpo` — the optimisers of the proxy;
- :mod:`.arithmetic` — part two: GRPO with an exact-answer reward.

Each stage is a function of the :class:`~rlhf_core.demo.pipeline.Run` (and of what earlier
stages returned) that follows the protocol of :mod:`rlhf_core.demo.pipeline`: announce, return
the saved results when the stage is done, otherwise work and :meth:`~Run.finish`.
"""
