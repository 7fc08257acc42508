"""The SweepToTop physics on pymunk 7: arena, goal sensor, debris and one embodiment.

The mechanics are X-MAGICAL's:

- The robot is driven through a kinematic *control body*: a pivot joint with no position
  correction (``max_bias = 0``) and a bounded force drags the robot's velocity towards
  ``speed`` along its heading, and a gear joint turns it towards ``heading + turn`` (at
  most 2.5 rad/s). Commands are re-applied before each of the 10 physics substeps.
- Debris lie on a table with friction: a pivot and a gear joint to the static body with no
  position correction and small forces brake their motion and spin.
- The gripper has two fingers on pivots, limited to [0, pi/8] from the body's axis, closed
  and opened by weak motors with a proportional rate.
- Two "pupil" bodies (no shapes) lag the robot's turning through soft rotary springs; they
  only move the drawn googly eyes.

Bodies, shapes and constraints are added in the benchmark's order, so the solver visits
them in the same order. A world is deterministic: the same layout and action sequence give
bit-identical states, which :class:`pbrl.envs.xmagical.SweepToTopCore` relies on to restore
checkpoints by replay.
"""

from __future__ import annotations

import math

import numpy as np
import pymunk as pm
import pymunk.batch as pmb

from pbrl.envs._xmagical import scene as sc

_FIELDS = (
    pmb.BodyFields.POSITION
    | pmb.BodyFields.ANGLE
    | pmb.BodyFields.VELOCITY
    | pmb.BodyFields.ANGULAR_VELOCITY
)
BODY_FIELDS = ("x", "y", "angle", "vx", "vy", "angular_velocity")
"""The columns of :meth:`SweepWorld.body_state` (the batch API writes them in this order)."""


class SweepWorld:
    """One SweepToTop episode's physics for ``embodiment``, laid out as ``layout``.

    :meth:`body_state` reads every moving body as ``(n_bodies, 6)`` float64 rows
    (x, y, angle, vx, vy, angular velocity) in the order robot, left pupil, right pupil,
    [left finger, right finger,] debris 0..2.
    """

    def __init__(self, embodiment: sc.Embodiment, layout: sc.Layout):
        self.embodiment = embodiment
        self.layout = layout
        self.space = space = pm.Space()
        space.collision_slop = sc.COLLISION_SLOP
        space.iterations = sc.PHYS_ITERATIONS
        self._add_arena()
        self._add_goal()
        self.debris = [self._add_debris(x, y) for x, y in layout.debris_xy]
        self.debris_shapes = [next(iter(b.shapes)) for b in self.debris]
        self._add_robot()
        # Commands, re-applied at every substep.
        self.speed = 0.0
        self.turn = 0.0
        self.finger_target = 0.0
        # Batched reads: one C call for all bodies, then a fixed permutation into our order,
        # found from the body ids the batch API reports.
        self._buf = pmb.Buffer()
        pmb.get_space_bodies(self.space, pmb.BodyFields.BODY_ID, self._buf)
        batch_ids = list(memoryview(self._buf.int_buf()).cast("P"))
        self.bodies = [self.robot, *self.pupils, *self.fingers, *self.debris]
        self._perm = np.array([batch_ids.index(b.id) for b in self.bodies])

    # --- construction ------------------------------------------------------------------
    def _add_arena(self) -> None:
        body = pm.Body(body_type=pm.Body.STATIC)
        a, r = sc.ARENA_HALF, sc.WALL_RADIUS
        corners = [(-a - r, a + r), (a + r, a + r), (a + r, -a - r), (-a - r, -a - r)]
        walls = []
        for p, q in zip(corners, corners[1:] + corners[:1], strict=True):
            seg = pm.Segment(body, p, q, r)
            seg.friction = sc.WALL_FRICTION
            walls.append(seg)
        self.space.add(body, *walls)

    def _add_goal(self) -> None:
        body = pm.Body(body_type=pm.Body.STATIC)
        self.goal_shape = pm.Poly.create_box(body, (sc.GOAL_WIDTH, sc.GOAL_HEIGHT))
        self.goal_shape.sensor = True
        body.position = sc.GOAL_CENTRE
        self.space.add(body, self.goal_shape)
        self._goal_bb = tuple(self.goal_shape.bb)  # static: (left, bottom, right, top)

    def _add_debris(self, x: float, y: float) -> pm.Body:
        body = pm.Body()
        body.position = (x, y)
        body.angle = 0.0
        self.space.add(body)
        side = sc.SQUARE_SIDE
        shape = pm.Poly.create_box(body, (side, side), 0.01 * side)  # slightly bevelled
        shape.mass = sc.DEBRIS_MASS
        shape.friction = sc.DEBRIS_FRICTION
        self.space.add(shape)
        phys = self.layout.physics
        static = self.space.static_body
        drag = pm.PivotJoint(static, body, (0, 0), (0, 0))
        drag.max_bias = 0
        drag.max_force = phys.shape_trans_joint_max_force
        spin = pm.GearJoint(static, body, 0.0, 1.0)
        spin.max_bias = 0
        spin.max_force = phys.shape_rot_joint_max_force
        self.space.add(drag, spin)
        return body

    def _add_robot(self) -> None:
        emb, phys = self.embodiment, self.layout.physics
        (x, y), angle = sc.ROBOT_POSE
        if emb.gripper:
            moment = pm.moment_for_circle(sc.ROBOT_MASS, 0, sc.ROBOT_RAD, (0, 0))
        else:
            w, h = emb.length * sc.ROBOT_RAD, emb.thickness * sc.ROBOT_RAD
            moment = pm.moment_for_box(sc.ROBOT_MASS, (w, h))
        self.robot = body = pm.Body(sc.ROBOT_MASS, moment)
        body.position, body.angle = (x, y), angle
        self.space.add(body)

        # Pupils: shapeless bodies that lag the robot's heading through soft springs. The
        # benchmark adds their springs first, then the fingers, then the pupil bodies; the
        # solver's order follows insertion, so we keep it.
        self.pupils = []
        for _ in range(2):
            mass = sc.ROBOT_MASS / 10
            pupil = pm.Body(mass, pm.moment_for_circle(mass, 0, sc.ROBOT_RAD, (0, 0)))
            pupil.angle = angle
            # The benchmark sets max_force = 0.001 here, but Chipmunk 7.0 (pymunk 5) never
            # clamped spring impulses; pymunk 7 does, which would freeze the pupils and
            # change how the robot turns. Unbounded reproduces the benchmark.
            spring = pm.DampedRotarySpring(body, pupil, 0, 0.1, 3e-3)
            self.pupils.append(pupil)
            self.space.add(spring)
        self.fingers: list[pm.Body] = []
        self._motors: list[pm.SimpleMotor] = []
        self._rates = [0.0, 0.0]
        if emb.gripper:
            self._add_fingers(body, phys.robot_finger_max_force)
        self.space.add(*self.pupils)

        # The control body the robot is dragged by.
        self.control = ctrl = pm.Body(body_type=pm.Body.KINEMATIC)
        ctrl.position, ctrl.angle = (x, y), angle
        self.space.add(ctrl)
        move = pm.PivotJoint(ctrl, body, (0, 0), (0, 0))
        move.max_bias = 0
        move.max_force = phys.robot_pos_joint_max_force
        turn = pm.GearJoint(ctrl, body, 0.0, 1.0)
        turn.error_bias = 0.0
        turn.max_bias = 2.5
        turn.max_force = phys.robot_rot_joint_max_force
        self.space.add(move, turn)

        robot_filter = pm.ShapeFilter(group=1)  # the robot's parts never collide
        if emb.gripper:
            shape: pm.Shape = pm.Circle(body, sc.ROBOT_RAD, (0, 0))
        else:
            shape = pm.Poly(body, [tuple(v) for v in emb.stick_vertices()])
        shape.filter = robot_filter
        shape.friction = sc.ROBOT_FRICTION
        self.space.add(shape)
        for finger, side in zip(self.fingers, (-1, 1), strict=False):
            for part in sc.finger_outer(side):
                poly = pm.Poly(finger, [tuple(v) for v in part])
                poly.filter = robot_filter
                poly.friction = sc.FINGER_FRICTION
                self.space.add(poly)

    def _add_fingers(self, body: pm.Body, max_force: float) -> None:
        for side, root in zip((-1, 1), sc.FINGER_ROOTS, strict=True):
            verts = [tuple(v) for part in sc.finger_outer(side) for v in part]
            finger = pm.Body(sc.FINGER_MASS, pm.moment_for_poly(sc.FINGER_MASS, verts))
            # Fingers start open: the left turned out anticlockwise, the right clockwise.
            finger.angle = body.angle - side * sc.FINGER_OPEN
            finger.position = body.local_to_world(root)
            self.space.add(finger)
            pivot = pm.PivotJoint(body, finger, finger.position)
            pivot.error_bias = 0.0
            lo, hi = (0.0, sc.FINGER_OPEN) if side < 0 else (-sc.FINGER_OPEN, 0.0)
            limit = pm.RotaryLimitJoint(body, finger, lo, hi)
            limit.error_bias = 0.0
            motor = pm.SimpleMotor(body, finger, 0.0)
            motor.max_bias = 0.0
            motor.max_force = max_force
            self.space.add(pivot, limit, motor)
            self.fingers.append(finger)
            self._motors.append(motor)

    # --- control and stepping --------------------------------------------------------
    def set_action(self, action: np.ndarray) -> None:
        """Speed, turn (and gripper closing, ``>= pi/8`` fully closed, ``<= 0`` open)."""
        self.speed = min(max(float(action[0]), -sc.SPEED_LIMIT), sc.SPEED_LIMIT)
        self.turn = min(max(float(action[1]), -sc.TURN_LIMIT), sc.TURN_LIMIT)
        if self.embodiment.gripper:
            self.finger_target = min(max(sc.FINGER_OPEN - float(action[2]), 0.0), sc.FINGER_OPEN)

    def _apply_controls(self) -> None:
        robot, ctrl = self.robot, self.control
        angle = robot.angle
        ctrl.angle = angle + self.turn
        # (0, speed) turned by the heading; the arithmetic of Vec2d.cpvrotate.
        ctrl.velocity = (-math.sin(angle) * self.speed, math.cos(angle) * self.speed)
        for k, (finger, motor) in enumerate(zip(self.fingers, self._motors, strict=True)):
            error = (finger.angle - angle) + (2 * k - 1) * self.finger_target
            rate = max(-1.0, min(1.0, error * 10))
            rate = 0.0 if abs(rate) < 1e-4 else rate
            if rate != self._rates[k]:  # the rate mostly sits at +-1 or 0; skip no-op writes
                motor.rate = self._rates[k] = rate

    def step(self) -> None:
        """One env step: :data:`scene.PHYS_STEPS` substeps of :data:`scene.DT` seconds."""
        for _ in range(sc.PHYS_STEPS):
            self._apply_controls()
            self.space.step(sc.DT)

    # --- reading -----------------------------------------------------------------------
    def body_state(self) -> np.ndarray:
        """``(n_bodies, 6)`` rows: x, y, angle, vx, vy, angular velocity (our body order)."""
        self._buf.clear()
        pmb.get_space_bodies(self.space, _FIELDS, self._buf)
        raw = np.frombuffer(self._buf.float_buf(), np.float64).reshape(-1, 6)
        return raw[self._perm]

    def debris_in_goal(self) -> list[bool]:
        """Whether each debris lies wholly inside the goal zone (bounding boxes, as scored).

        The boxes are Chipmunk's own, cached at the last step's collision pass.
        """
        left, bottom, right, top = self._goal_bb
        out = []
        for shape in self.debris_shapes:
            bb = shape.bb
            out.append(
                left <= bb.left and right >= bb.right and bottom <= bb.bottom and top >= bb.top
            )
        return out
