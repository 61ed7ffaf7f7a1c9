"""The arrays that define an SMPL body model, in one place and one layout.

Every source of SMPL data (the HMR checkpoint's buffers, the official `smpl_model.pkl`, a standard
SMPL_NEUTRAL file, or the procedurally generated mannequin) is converted to `SMPLArrays`; the SMPL
module and the renderer only ever see this dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_VERTICES = 6890
NUM_FACES = 13776
NUM_JOINTS = 24
NUM_COCOPLUS = 19
NUM_BETAS = 10
NUM_POSE_BASIS = 207  # 23 joints x 9 rotation-matrix entries

# The standard SMPL kinematic tree (parent of each of the 24 joints; root = -1).
SMPL_PARENTS = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21], dtype=np.int64
)


@dataclass(frozen=True)
class SMPLArrays:
    """SMPL model arrays in the layout of the SMPL pickle (float64 or float32 numpy).

    v_template:          V x 3        rest-pose vertices
    shapedirs:           V x 3 x 10   shape blend-shape directions
    posedirs:            V x 3 x 207  pose blend-shape directions
    J_regressor:         24 x V       dense joint regressor
    weights:             V x 24       skinning weights (rows sum to 1)
    parents:             24           parent joint index, root -1
    faces:               F x 3        triangle vertex indices (int64)
    cocoplus_regressor:  19 x V       dense COCO-plus joint regressor
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    cocoplus_regressor: np.ndarray

    def hmr_buffers(self) -> dict[str, np.ndarray]:
        """The six `smpl.*` buffers in the layout stored inside the official `hmr_tf2pt.pth`."""
        v = self.v_template.shape[0]
        return {
            "v_template": self.v_template.astype(np.float32),
            "shapedirs": self.shapedirs.reshape(v * 3, -1).T.astype(np.float32),
            "J_regressor": self.J_regressor.T.astype(np.float32),
            "posedirs": self.posedirs.reshape(v * 3, -1).T.astype(np.float32),
            "weights": self.weights.astype(np.float32),
            "joint_regressor": self.cocoplus_regressor.T.astype(np.float32),
        }

    @classmethod
    def from_hmr_buffers(
        cls, buffers: dict[str, np.ndarray], faces: np.ndarray, parents: np.ndarray = SMPL_PARENTS
    ) -> "SMPLArrays":
        """Inverse of `hmr_buffers`: rebuild the arrays from the checkpoint layout (+ faces, tree)."""
        v = buffers["v_template"].shape[0]
        return cls(
            v_template=np.asarray(buffers["v_template"]),
            shapedirs=np.asarray(buffers["shapedirs"]).T.reshape(v, 3, -1),
            posedirs=np.asarray(buffers["posedirs"]).T.reshape(v, 3, -1),
            J_regressor=np.asarray(buffers["J_regressor"]).T,
            weights=np.asarray(buffers["weights"]),
            parents=np.asarray(parents, dtype=np.int64),
            faces=np.asarray(faces, dtype=np.int64),
            cocoplus_regressor=np.asarray(buffers["joint_regressor"]).T,
        )
