"""What the command line does around the stages: checking a store (fsck), retention, the doctor, browsing
images, and which input a stage needs."""
