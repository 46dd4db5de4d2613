"""Pure helpers shared by the stages: audio decode/encode/resample/loudness (``audio``), transcripts and
subtitles (``subtitles``), speaker turns (``speakers``) and the synthetic-speech quality guard (``quality``)."""
