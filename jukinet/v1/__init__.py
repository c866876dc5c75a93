"""Generated from protos/jukinet/v1; never edited by hand."""
