"""The scheduling service: schedules, slots, appointments (his.scheduling.v1)."""
