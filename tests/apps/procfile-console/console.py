print("console says hi")  # a one-shot type: exits at once
