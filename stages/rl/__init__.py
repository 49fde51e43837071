"""RL from rewards: our own PPO loop and its pure math (`ppo_math`)."""
