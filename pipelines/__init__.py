"""Data preparation jobs and the audio / mel code they share with inference."""
