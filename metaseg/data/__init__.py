"""Data side: readers for public layouts, validated cache, tasks, episodes, synthetic tasks."""
