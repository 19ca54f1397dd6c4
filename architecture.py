"""The networks this repository defines itself.

    VAE          Task 5: the assignment's convolutional VAE for 1x28x28 images.
                 Do not change its layers: the assignment fixes them.

Shapes in comments are [batch, channels, height, width].
"""
from __future__ import annotations

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------
# Task 5: convolutional VAE (Kingma & Welling 2014)
# ----------------------------------------------------------------------------


class VAE(nn.Module):
    """Encoder: conv 1->32 (4x4, s2, p1) -> conv 32->64 (4x4, s2, p1) -> flatten
    64*7*7 -> linear 256 -> linear heads to mu and logvar (latent_dim each).
    Decoder: linear latent_dim->256 -> linear 256->64*7*7 -> convT 64->32 (4x4, s2, p1)
    -> convT 32->1 (4x4, s2, p1) -> sigmoid. ReLU between layers."""

    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),   # [B, 32, 14, 14]
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # [B, 64, 7, 7]
            nn.Flatten(),                                          # [B, 3136]
            nn.Linear(64 * 7 * 7, 256), nn.ReLU(),                 # [B, 256]
        )
        self.fc_mu = nn.Linear(256, latent_dim)
        self.fc_logvar = nn.Linear(256, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(),
            nn.Linear(256, 64 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),                                    # [B, 64, 7, 7]
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # [B, 32, 14, 14]
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),              # [B, 1, 28, 28]
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] in [0, 1] -> (mu, logvar), each [B, latent_dim]."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> Bernoulli/Gaussian means [B, 1, 28, 28] in (0, 1)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): a sample that gradients flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar
