"""Videos and image folders: reading frames (`reader`), running a run's members on them
(`predict`), and picking frames to label next (`suggest`)."""
