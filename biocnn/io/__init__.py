"""File formats: MRC images/stacks/volumes and RELION STAR tables."""
