"""How the jobs run: local Ray by default, AWS / KubeRay configs, job submission."""
