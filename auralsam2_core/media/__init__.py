"""Reading real media: video frames, the audio track, and the VGGish log-mel front end."""
