"""`bmojo bench`: the speed suite (scans, windowed attention, training, decode, memory) measured in one run."""
