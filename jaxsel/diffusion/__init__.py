"""Diffusion steering: SVDD and Feynman-Kac steering for continuous and masked-discrete diffusion."""
