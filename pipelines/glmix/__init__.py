"""The fit-glmix job: GLMix fitted on a co-watch log into an artifact, and which coordinates it ships."""
