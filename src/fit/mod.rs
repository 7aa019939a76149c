//! `iot-sim fit`: generator parameters estimated from a recorded series.
