"""Pixel methods the stages share: imputation of missing pixels, and the corruption patterns it is measured on."""
