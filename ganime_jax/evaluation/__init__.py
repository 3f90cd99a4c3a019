"""`--mode=eval`: the model against baselines on held-out clips (FVD, KVD, PSNR, SSIM, LPIPS)."""
