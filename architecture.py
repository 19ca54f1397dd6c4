"""The networks this repository defines itself.

    VAE          Task 5: the assignment's convolutional VAE for 1x28x28 images.
                 Do not change its layers: the assignment fixes them.
    Generator, Discriminator
                 Task 3: the assignment's MLP GAN (z 100 -> 256 -> 512 -> 784, ReLU,
                 tanh; 784 -> 256 -> 256 -> 1, LeakyReLU 0.2), N(0, 0.02) weights
                 (init_gan_weights); D options: dropout, minibatch standard deviation.
    ReferenceGenerator, ReferenceDiscriminator
                 Task 3: PyTorch-GAN's implementations/gan/gan.py, layer for layer
                 (100 -> 128 -> 256 -> 512 -> 1024 -> 784 with BatchNorm; 784 -> 512
                 -> 256 -> 1).
    CifarBlock, CifarResNet
                 Task 1 (scratch_shortcuts): He et al. 2016's CIFAR ResNet (depth 6n + 2,
                 option A shortcuts) and the plain net of the same depth.
    residual_blocks, cut_shortcuts, restore_shortcuts, shortcuts_cut
                 Task 1 (residual): a torchvision ResNet's blocks with their shortcuts
                 cut (each returns relu(F(x))) and restored, weights untouched.
    DigitClassifier
                 Tasks 3 and 5: a small CNN that scores generated 1x28x28 images
                 (class, confidence, penultimate features). Not part of any model
                 studied; >= 99% on MNIST after a few epochs.

Shapes in comments are [batch, channels, height, width].
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Task 5: convolutional VAE (Kingma & Welling 2014)
# ----------------------------------------------------------------------------


class VAE(nn.Module):
    """The assignment's provided VAE, unchanged: the same layers under the same names
    and the same methods, so a state dict saved from the provided class loads here
    with `load_state_dict(strict=True)` and computes the same function.

    Encoder: enc_conv1 1->32 (4x4, s2, p1) -> enc_conv2 32->64 (4x4, s2, p1) -> flatten
    64*7*7 = 3136 -> enc_fc 256 -> heads fc_mu, fc_logvar (latent_dim each).
    Decoder: dec_fc latent_dim->256 -> dec_fc2 256->3136 -> [64, 7, 7] -> dec_deconv1
    64->32 (4x4, s2, p1) -> dec_deconv2 32->1 (4x4, s2, p1) -> sigmoid. ReLU between."""

    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc_conv1 = nn.Conv2d(1, 32, 4, stride=2, padding=1)             # [B, 32, 14, 14]
        self.enc_conv2 = nn.Conv2d(32, 64, 4, stride=2, padding=1)            # [B, 64, 7, 7]
        self.enc_fc = nn.Linear(64 * 7 * 7, 256)                              # [B, 256]
        self.fc_mu = nn.Linear(256, latent_dim)
        self.fc_logvar = nn.Linear(256, latent_dim)
        self.dec_fc = nn.Linear(latent_dim, 256)
        self.dec_fc2 = nn.Linear(256, 64 * 7 * 7)
        self.dec_deconv1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)  # [B, 32, 14, 14]
        self.dec_deconv2 = nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1)   # [B, 1, 28, 28]

    # Parameter-name prefixes of the two halves (Task 5 gives them their own learning
    # rates and, for aggressive encoder training, their own update steps).
    ENCODER = ("enc_", "fc_mu", "fc_logvar")
    DECODER = ("dec_",)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] in [0, 1] -> (mu, logvar), each [B, latent_dim]."""
        h = F.relu(self.enc_conv1(x))
        h = F.relu(self.enc_conv2(h))
        h = F.relu(self.enc_fc(h.flatten(1)))
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): a sample that gradients flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> Bernoulli/Gaussian means [B, 1, 28, 28] in (0, 1)."""
        h = F.relu(self.dec_fc(z))
        h = F.relu(self.dec_fc2(h)).view(-1, 64, 7, 7)
        h = F.relu(self.dec_deconv1(h))
        return torch.sigmoid(self.dec_deconv2(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (reconstruction from one z ~ q(z|x), mu, logvar)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


# ----------------------------------------------------------------------------
# Task 3: GANs (Goodfellow et al. 2014) on 1x28x28 images in [-1, 1]
# ----------------------------------------------------------------------------
# The discriminators return LOGITS [B]: D(x) = sigmoid(logit). The sigmoid of the
# assignment's D is folded into the loss (BCE-with-logits = sigmoid + BCE, computed
# stably), so log D and log(1 - D) stay finite even when D saturates, which is
# exactly the regime Task 3's vanishing-gradient experiment drives D into.


def init_gan_weights(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN's initialisation (Radford et al. 2016): Linear weights ~ N(0, std),
    biases 0; BatchNorm scales ~ N(1, std), shifts 0. Use with `model.apply`."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, std)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """The assignment's generator: z [B, z_dim] -> linear 256 -> ReLU -> linear 512
    -> ReLU -> linear 784 -> tanh -> image [B, 1, 28, 28] in [-1, 1]."""

    def __init__(self, z_dim: int = 100, hidden: tuple[int, ...] = (256, 512), out_shape=(1, 28, 28)):
        super().__init__()
        self.z_dim, self.out_shape = z_dim, tuple(out_shape)
        layers, width = [], z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        out = 1
        for d in self.out_shape:
            out *= d
        layers += [nn.Linear(width, out), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MinibatchStdDev(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, ProGAN, section 3): append one
    feature, the batch's feature-wise standard deviation averaged over features, to
    every sample's feature vector [B, F] -> [B, F + 1]. A collapsed generator makes
    batches with near-zero spread, which D can then see and punish (a cheap form of
    minibatch discrimination, Salimans et al. 2016). The batch is one group."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = h.float().std(dim=0, unbiased=False).mean()          # scalar
        return torch.cat([h, s.to(h.dtype).expand(h.shape[0], 1)], dim=1)


class Discriminator(nn.Module):
    """The assignment's discriminator: image [B, 1, 28, 28] -> flatten 784 -> linear
    256 -> LeakyReLU(0.2) -> linear 256 -> LeakyReLU(0.2) -> linear 1 -> logit [B]
    (D(x) = sigmoid(logit)). Options: `dropout` after each hidden activation (0.4
    is Task 3's overfitting cure); `minibatch_std` appends MinibatchStdDev's feature
    before the last layer. `features(x)` is the last hidden layer [B, 256], used by
    feature matching (Salimans et al. 2016)."""

    def __init__(self, in_dim: int = 784, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0,
                 minibatch_std: bool = False):
        super().__init__()
        layers, width = [nn.Flatten()], in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev() if minibatch_std else nn.Identity()
        self.head = nn.Linear(width + int(minibatch_std), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)                                        # [B, hidden[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mbstd(self.body(x))).squeeze(1)      # logits [B]


class ReferenceGenerator(nn.Module):
    """PyTorch-GAN's gan.py generator (eriklindernoren/PyTorch-GAN,
    implementations/gan/gan.py), layer for layer: z -> 128 (LeakyReLU 0.2, no norm)
    -> 256 -> 512 -> 1024 (each Linear -> BatchNorm1d -> LeakyReLU 0.2) -> 784 ->
    tanh. `BatchNorm1d(out, 0.8)` there passes 0.8 as eps (not momentum); kept,
    since the point is to train *that* network. PyTorch's default init, as there."""

    def __init__(self, z_dim: int = 100, out_shape=(1, 28, 28)):
        super().__init__()
        self.z_dim, self.out_shape = z_dim, tuple(out_shape)

        def block(i, o, normalize=True):
            return [nn.Linear(i, o)] + ([nn.BatchNorm1d(o, 0.8)] if normalize else []) + [nn.LeakyReLU(0.2)]

        out = 1
        for d in self.out_shape:
            out *= d
        self.net = nn.Sequential(*block(z_dim, 128, normalize=False), *block(128, 256), *block(256, 512),
                                 *block(512, 1024), nn.Linear(1024, out), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class ReferenceDiscriminator(nn.Module):
    """PyTorch-GAN's gan.py discriminator: flatten 784 -> 512 -> LeakyReLU(0.2) ->
    256 -> LeakyReLU(0.2) -> 1 -> logit [B] (their sigmoid is folded into the loss,
    as for Discriminator). `features(x)` is the 256-wide last hidden layer."""

    def __init__(self, in_dim: int = 784):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 512), nn.LeakyReLU(0.2),
                                  nn.Linear(512, 256), nn.LeakyReLU(0.2))
        self.head = nn.Linear(256, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(1)


# ----------------------------------------------------------------------------
# Tasks 3 and 5: a small CNN that scores generated digits and clothes
# ----------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """The evaluation CNN of Tasks 3 and 5: x [B, 1, 28, 28] (in the range it was trained on) ->
    two conv-conv-pool stages (w, 2w channels; 28 -> 14 -> 7) -> linear 128 (the
    penultimate features FD-MNIST-classifier uses) -> 10 logits."""

    def __init__(self, width: int = 32, feat_dim: int = 128):
        super().__init__()

        def conv(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        w = width
        self.body = nn.Sequential(*conv(1, w), *conv(w, w), nn.MaxPool2d(2),             # [B, w, 14, 14]
                                  *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),  # [B, 2w, 7, 7]
                                  nn.Flatten(), nn.Linear(2 * w * 49, feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


# ----------------------------------------------------------------------------
# Task 1: He et al. 2016's CIFAR ResNet, with and without shortcuts
# ----------------------------------------------------------------------------


class CifarBlock(nn.Module):
    """The CIFAR ResNet's basic block (He et al. 2016, sec. 4.2): 3x3 conv-BN-ReLU,
    3x3 conv-BN, then relu(F(x) + shortcut(x)). Option A shortcut: the identity, or
    where the block halves the resolution and doubles the channels, x subsampled by 2
    with the new channels zero-padded, so the shortcut has no parameters and the plain
    network (shortcut=False: relu(F(x))) has exactly the same ones."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels, self.shortcut = stride, c_out - c_in, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.shortcut:
            s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            out = out + (F.pad(s, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else s)
        return F.relu(out)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR-10 network with depth = 6n + 2 weighted layers: a 3x3 conv with
    `width` filters, three stages of n blocks at 32, 16, 8 px with width, 2 width and
    4 width filters, global average pooling and a linear classifier. ResNet-20 has
    0.27 M parameters and ResNet-56 0.85 M (their Table 6). shortcuts=False is their
    plain net of the same depth. Convolutions start as in He et al. 2015 (Kaiming
    normal, fan_out), BatchNorm at weight 1, bias 0."""

    def __init__(self, depth: int, width: int = 16, n_classes: int = 10, shortcuts: bool = True):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, c_in = [], width
        for stage in range(3):
            c_out = width * 2 ** stage
            for i in range(n):
                blocks.append(CifarBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, shortcuts))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, 32, 32] -> logits [B, K]
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------
# Task 1: cutting the shortcuts of a torchvision ResNet (residual experiment)
# ----------------------------------------------------------------------------


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of all residual blocks of a torchvision ResNet, input to output: layer1.0,
    layer1.1, ..., layer4.2."""
    return [f"layer{s}.{i}" for s in range(1, 5) for i in range(len(getattr(model, f"layer{s}")))]


def residual_branch_only(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision BasicBlock/Bottleneck with its shortcut cut: relu(F(x)) instead of
    relu(F(x) + x) (or relu(F(x) + downsample(x))). Installed as the block's forward.
    A Bottleneck is the block with a third conv (torchvision is not imported here)."""
    out = block.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):  # Bottleneck: 1x1 -> 3x3 -> 1x1
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:  # BasicBlock: 3x3 -> 3x3
        out = block.bn2(block.conv2(out))
    return block.relu(out)


def cut_shortcuts(model: nn.Module, names: list[str]) -> None:
    """Replace each named block's forward (an instance attribute shadows the class's
    method, so restore_shortcuts undoes it exactly; no weights change)."""
    for name in names:
        block = model.get_submodule(name)
        block.forward = types.MethodType(residual_branch_only, block)


def restore_shortcuts(model: nn.Module, names: list[str]) -> None:
    for name in names:
        model.get_submodule(name).__dict__.pop("forward", None)


@contextlib.contextmanager
def shortcuts_cut(model: nn.Module, names: list[str]):
    """The blocks `names` of `model` cut (cut_shortcuts) inside the block, restored after, even on error."""
    cut_shortcuts(model, names)
    try:
        yield model
    finally:
        restore_shortcuts(model, names)
