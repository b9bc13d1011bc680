"""Neural shape model (NSM) fit of the femur and BScore (see docs/shape.md).

Public API::

    from pipeline.shape import load_shape_models, shape_stage
    models = load_shape_models(settings.nsm)          # once per worker
    res = shape_stage(labels, spacing, direction, origin, models=models, settings=settings.nsm)
    res["bscore"], res["nsm_assd_bone_mm"], res["nsm_latent"] ...
"""

from pipeline.shape.decoder import DecoderConfig, TriplanarDecoder, build_decoder, public_state_dict
from pipeline.shape.fit import FitOptions, FitResult, fit_latent, latent_surfaces
from pipeline.shape.model import BScoreModel, NsmModel, load_bscore, load_model
from pipeline.shape.stage import ShapeModels, load_shape_models, shape_stage, shape_to_folder
from pipeline.shape.surfaces import Geometry, knee_side, prepare_surfaces

__all__ = [
    "BScoreModel",
    "DecoderConfig",
    "FitOptions",
    "FitResult",
    "Geometry",
    "NsmModel",
    "ShapeModels",
    "TriplanarDecoder",
    "build_decoder",
    "fit_latent",
    "knee_side",
    "latent_surfaces",
    "load_bscore",
    "load_model",
    "load_shape_models",
    "prepare_surfaces",
    "public_state_dict",
    "shape_stage",
    "shape_to_folder",
]
