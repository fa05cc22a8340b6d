"""Backends run a job's three phases: `local` in this process, `tekton` as a PipelineRun."""
