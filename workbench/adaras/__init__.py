"""AdaRAS (arXiv 2601.19847): reasoning-critical neurons, their controls, the failure gate."""
