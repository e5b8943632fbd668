"""What the policy is trained on: GRPO / T-GRPO / Dr.GRPO advantages and the clipped policy loss
with its aggregations (grpo.py), the SFT loss (sft.py), a rollout scored into rewards, group
advantages and the step's arrays (scoring.py), and DAPO's dynamic sampling and overlong shaping
(dapo.py)."""
