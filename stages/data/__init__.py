"""The data layer: dataset specs, formats and chat rendering shared by data stages."""
